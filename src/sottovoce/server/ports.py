"""What the fan-out may ask of the rest of the server: the node's online map, a way to
re-read storage for a session, the directory cache to drop, metrics and the log. It never
sees the app, delivery or rooms, so that the arrows between them run one way
(docs/architecture.md §Server):

    app (composition root) ──► Delivery, Rooms ──► Presence ──► Fanout ──► FanoutPorts
                          └──► Replay ──► Session, storage

``FanoutPorts.catch_up`` is :meth:`Replay.catch_up` and ``invalidate`` is
:meth:`Directory.invalidate`, handed over as callables by the composition root.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sottovoce.server.logs import JsonLogger
from sottovoce.server.metrics import Metrics
from sottovoce.server.session import Session

#: (user id, device id): one device, wherever it is connected.
DeviceKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class FanoutPorts:
    #: The sessions connected to this node, by device (owned by the app; read only here).
    online: Mapping[DeviceKey, Session]
    #: Re-read storage for a session that may have missed live frames.
    catch_up: Callable[[Session], None]
    #: Drop this node's cached copy of an account another node changed.
    invalidate: Callable[[str], None]
    metrics: Metrics
    log: JsonLogger
