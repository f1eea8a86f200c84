"""Cross-node fan-out: in-process (one node) or NATS (many nodes); see :mod:`.base`."""

from __future__ import annotations

from sottovoce.server.fanout.base import DeviceKey, Fanout, InProcessFanout
from sottovoce.server.ports import FanoutPorts

__all__ = ["DeviceKey", "Fanout", "FanoutPorts", "InProcessFanout", "make_fanout"]


def make_fanout(
    ports: FanoutPorts, nats: str | None, *, node_id: str, namespace: str
) -> Fanout:
    """NATS when ``--nats`` is configured, else the in-process fan-out (no import of nats)."""
    if not nats:
        return InProcessFanout(ports)
    from sottovoce.server.fanout.nats import NatsFanout

    return NatsFanout(ports, nats, node_id=node_id, namespace=namespace)
