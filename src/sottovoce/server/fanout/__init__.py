"""Cross-node fan-out: in-process (one node) or NATS (many nodes); see :mod:`.base`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sottovoce.server.fanout.base import DeviceKey, Fanout, InProcessFanout

if TYPE_CHECKING:
    from sottovoce.server.app import ServerApp

__all__ = ["DeviceKey", "Fanout", "InProcessFanout", "make_fanout"]


def make_fanout(app: ServerApp) -> Fanout:
    """NATS when ``--nats`` is configured, else the in-process fan-out (no import of nats)."""
    url = app.config.nats
    if not url:
        return InProcessFanout(app)
    from sottovoce.server.fanout.nats import NatsFanout

    return NatsFanout(app, url, node_id=app.node_id, namespace=app.config.nats_namespace)
