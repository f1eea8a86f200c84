"""Prometheus metrics from a per-app registry (docs/operations.md §Metrics).

Hot-path counters are plain ints read at scrape time by a collector: a
``prometheus_client`` ``Counter.inc()`` takes a lock and costs about a
microsecond, several times per message. Label values come from fixed sets
(event names, error codes) — never from client-chosen ids or content.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sottovoce.protocol.rooms import ALL_CLIENT_EVENTS


@dataclass(eq=False, repr=False, kw_only=True)
class Metrics(Collector):
    connections: Callable[[], int] = lambda: 0
    online: Callable[[], int] = lambda: 0
    tickles: Callable[[], int] = lambda: 0
    unauthenticated: Callable[[], int] = lambda: 0
    key_claims: Callable[[], dict[tuple[str, str], int]] = dict

    def __post_init__(self) -> None:
        #: WebSocket upgrades refused, by reason (a fixed set: see ServerApp).
        self.handshakes_refused: dict[str, int] = {}
        #: Unauthenticated sessions closed to make room for newer ones.
        self.preauth_evicted = 0
        #: Sends refused with inbox_full, by quota scope (device, contact, stranger).
        self.inbox_full: dict[str, int] = {}
        self.frames: dict[str, int] = dict.fromkeys((*ALL_CLIENT_EVENTS, "invalid"), 0)
        self.errors: dict[str, int] = {}
        self.closes: dict[int, int] = {}
        self.sends_stored = 0
        self.sends_duplicate = 0
        self.sends_ephemeral = 0
        self.deliveries_live = 0
        self.deliveries_replay = 0
        self.acked = 0
        self.expired = 0
        self.replay_rereads = 0
        self.resumes = 0
        self.resumes_deferred = 0
        # Rooms: messages and commits stored, room frames written, messages
        # deleted once every member read them.
        self.room_messages = 0
        self.room_commits = 0
        self.room_deliveries_live = 0
        self.room_deliveries_replay = 0
        self.room_deleted = 0
        r = self.registry = CollectorRegistry()
        r.register(self)
        self.batch = Histogram(
            "sottovoce_commit_batch_jobs", "jobs per storage commit", registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
        )
        self.commit = Histogram(
            "sottovoce_commit_seconds", "storage transaction time incl. fsync", registry=r,
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
        )

    def frame(self, event: str) -> None:
        frames = self.frames
        if event in frames:
            frames[event] += 1
        else:
            frames["invalid"] += 1

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def handshake_refused(self, reason: str) -> None:
        self.handshakes_refused[reason] = self.handshakes_refused.get(reason, 0) + 1

    def inbox_refused(self, scope: str) -> None:
        """A send refused with inbox_full, by quota scope (device, contact, stranger)."""
        self.inbox_full[scope] = self.inbox_full.get(scope, 0) + 1

    def closed(self, code: int) -> None:
        self.closes[code] = self.closes.get(code, 0) + 1

    def observe_batch(self, jobs: int, seconds: float) -> None:
        """Called by the storage writer thread once per commit."""
        self.batch.observe(jobs)
        self.commit.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("sottovoce_connections", "open WebSocket connections",
                                value=self.connections())
        yield GaugeMetricFamily("sottovoce_devices_online", "authenticated devices",
                                value=self.online())
        yield GaugeMetricFamily("sottovoce_connections_unauthenticated",
                                "connections that have not authenticated yet",
                                value=self.unauthenticated())
        yield _counted("sottovoce_handshakes_refused", "WebSocket upgrades refused, by reason",
                       ["reason"], sorted(self.handshakes_refused.items()))
        yield CounterMetricFamily("sottovoce_preauth_evicted",
                                  "unauthenticated connections closed to make room for newer ones",
                                  value=self.preauth_evicted)
        yield _counted("sottovoce_frames_received", "client frames by event", ["event"],
                       self.frames.items())
        yield _counted("sottovoce_sends", "sends by kind", ["kind"], [
            ("stored", self.sends_stored), ("duplicate", self.sends_duplicate),
            ("ephemeral", self.sends_ephemeral),
        ])
        yield _counted("sottovoce_deliveries", "inbox frames written to sockets", ["path"], [
            ("live", self.deliveries_live), ("replay", self.deliveries_replay),
        ])
        yield CounterMetricFamily("sottovoce_inbox_acked", "inbox frames deleted on ack",
                                  value=self.acked)
        yield CounterMetricFamily("sottovoce_inbox_expired", "inbox frames deleted by retention",
                                  value=self.expired)
        yield CounterMetricFamily("sottovoce_replay_rereads",
                                  "replays that re-read storage after live frames overflowed",
                                  value=self.replay_rereads)
        yield _counted("sottovoce_resumes", "ksmpv3.resume requests, and those whose replay "
                       "waited for the device's turn", ["kind"], [
            ("requested", self.resumes), ("deferred", self.resumes_deferred),
        ])
        yield _counted("sottovoce_room_events", "room messages and frames", ["kind"], [
            ("message_stored", self.room_messages),
            ("commit_stored", self.room_commits),
            ("frame_live", self.room_deliveries_live),
            ("frame_replay", self.room_deliveries_replay),
            ("message_deleted", self.room_deleted),
        ])
        yield _counted("sottovoce_inbox_full", "sends refused by an inbox quota, by scope",
                       ["scope"], sorted(self.inbox_full.items()))
        yield _counted(
            "sottovoce_key_claims", "prekey and KeyPackage claims: allowed one-time keys, or "
            "limited to the fallback / last-resort key", ["kind", "result"],
            sorted(self.key_claims().items()))
        yield CounterMetricFamily("sottovoce_push_tickles", "push tickles sent",
                                  value=self.tickles())
        yield _counted("sottovoce_errors", "ksmpv3.error by code", ["code"],
                       sorted(self.errors.items()))
        yield _counted("sottovoce_closes", "server-initiated closes by code", ["code"],
                       sorted(self.closes.items()))


def _counted(
    name: str, doc: str, labels: list[str], counts: Iterable[tuple[Any, int]]
) -> CounterMetricFamily:
    """A labelled counter family from (label value, or a tuple of them; count) pairs."""
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, n in counts:
        family.add_metric([str(v) for v in key] if isinstance(key, tuple) else [str(key)], n)
    return family
