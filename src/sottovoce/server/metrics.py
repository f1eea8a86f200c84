"""Prometheus metrics from a per-app registry (docs/operations.md §Metrics).

Hot-path counters are plain ints read at scrape time by a collector: a
``prometheus_client`` ``Counter.inc()`` takes a lock and costs about a
microsecond, several times per message. Label values come from fixed sets
(event names, error codes) — never from client-chosen ids or content.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sottovoce.protocol.rooms import ALL_CLIENT_EVENTS


class Metrics(Collector):
    def __init__(
        self,
        *,
        connections: Callable[[], int] = lambda: 0,
        online: Callable[[], int] = lambda: 0,
        tickles: Callable[[], int] = lambda: 0,
        unauthenticated: Callable[[], int] = lambda: 0,
        key_claims: Callable[[], dict[tuple[str, str], int]] = dict,
    ) -> None:
        self.key_claims = key_claims
        self.connections = connections
        self.online = online
        self.tickles = tickles
        self.unauthenticated = unauthenticated
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
        refused = CounterMetricFamily("sottovoce_handshakes_refused",
                                      "WebSocket upgrades refused, by reason", labels=["reason"])
        for reason, n in sorted(self.handshakes_refused.items()):
            refused.add_metric([reason], n)
        yield refused
        yield CounterMetricFamily("sottovoce_preauth_evicted",
                                  "unauthenticated connections closed to make room for newer ones",
                                  value=self.preauth_evicted)
        frames = CounterMetricFamily("sottovoce_frames_received", "client frames by event",
                                     labels=["event"])
        for event, n in self.frames.items():
            frames.add_metric([event], n)
        yield frames
        sends = CounterMetricFamily("sottovoce_sends", "sends by kind", labels=["kind"])
        sends.add_metric(["stored"], self.sends_stored)
        sends.add_metric(["duplicate"], self.sends_duplicate)
        sends.add_metric(["ephemeral"], self.sends_ephemeral)
        yield sends
        deliveries = CounterMetricFamily("sottovoce_deliveries",
                                         "inbox frames written to sockets", labels=["path"])
        deliveries.add_metric(["live"], self.deliveries_live)
        deliveries.add_metric(["replay"], self.deliveries_replay)
        yield deliveries
        yield CounterMetricFamily("sottovoce_inbox_acked", "inbox frames deleted on ack",
                                  value=self.acked)
        yield CounterMetricFamily("sottovoce_inbox_expired", "inbox frames deleted by retention",
                                  value=self.expired)
        yield CounterMetricFamily("sottovoce_replay_rereads",
                                  "replays that re-read storage after live frames overflowed",
                                  value=self.replay_rereads)
        resumes = CounterMetricFamily("sottovoce_resumes", "ksmpv3.resume requests, and those "
                                      "whose replay waited for the device's turn",
                                      labels=["kind"])
        resumes.add_metric(["requested"], self.resumes)
        resumes.add_metric(["deferred"], self.resumes_deferred)
        yield resumes
        rooms = CounterMetricFamily("sottovoce_room_events", "room messages and frames",
                                    labels=["kind"])
        rooms.add_metric(["message_stored"], self.room_messages)
        rooms.add_metric(["commit_stored"], self.room_commits)
        rooms.add_metric(["frame_live"], self.room_deliveries_live)
        rooms.add_metric(["frame_replay"], self.room_deliveries_replay)
        rooms.add_metric(["message_deleted"], self.room_deleted)
        yield rooms
        full = CounterMetricFamily("sottovoce_inbox_full",
                                   "sends refused by an inbox quota, by scope", labels=["scope"])
        for scope, n in sorted(self.inbox_full.items()):
            full.add_metric([scope], n)
        yield full
        claims = CounterMetricFamily(
            "sottovoce_key_claims", "prekey and KeyPackage claims: allowed one-time keys, or "
            "limited to the fallback / last-resort key", labels=["kind", "result"])
        for (kind, result), n in sorted(self.key_claims().items()):
            claims.add_metric([kind, result], n)
        yield claims
        yield CounterMetricFamily("sottovoce_push_tickles", "push tickles sent",
                                  value=self.tickles())
        errors = CounterMetricFamily("sottovoce_errors", "ksmpv3.error by code", labels=["code"])
        for code, n in sorted(self.errors.items()):
            errors.add_metric([code], n)
        yield errors
        closes = CounterMetricFamily("sottovoce_closes", "server-initiated closes by code",
                                     labels=["code"])
        for close, n in sorted(self.closes.items()):
            closes.add_metric([str(close)], n)
        yield closes
