"""Recording consent in a room call, sans-IO.

::

    requester                                every other present participant
    ─────────                                ───────────────────────────────
    request()  ── REQUEST(id) ─────────────►  RecordingRequested → answer(yes/no)
               ◄───────────── GRANT / REFUSE ─
    all said yes within 20 s:
      START(id) ─────────────────────────►   REC on      (RecordingState on)
      RecordingPermission(allowed) + audit "recording on"
    any no, or 20 s without every answer:
      STOP(id)  ─────────────────────────►   request over
      RecordingRefused
    while running: stop(), a REFUSE (consent withdrawn), a device joining, or
    the requester leaving ends it:  STOP(id) → REC off, audit "recording off"

"Present" is the call group's membership when the request is made; a device
that leaves stops counting, one that joins during the request makes it fail
(it was never asked) and one that joins during a recording stops it (the
requester may ask again, the newcomer included). Every client shows REC from
START to STOP; a device that is told of a recording it never agreed to still
shows it, marked not consented.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sottovoce.calls.media_keys import Device
from sottovoce.calls.room_effects import (
    AppendAudit,
    RecordingPermission,
    RecordingRefused,
    RecordingRequested,
    RecordingState,
    RoomCallEffect,
)
from sottovoce.calls.room_signals import Recording, RecordingStep
from sottovoce.errors import UsageError
from sottovoce.limits import CALL_RECORDING_CONSENT_MS
from sottovoce.protocol.audit import AuditAction


@dataclass(slots=True)
class _Round:
    request_id: bytes
    requester: Device
    asked: set[Device]
    deadline_ms: int
    granted: set[Device] = field(default_factory=set)
    running: bool = False
    my_answer: bool | None = None  # at a participant: what this device answered


class RecordingConsent:
    """One device's view of the call's recording consent (see the module docstring)."""

    def __init__(self, me: Device) -> None:
        self._me = me
        self._round: _Round | None = None
        #: Recording payloads to seal into the call group, in order.
        self.outbox: list[Recording] = []
        self.effects: list[RoomCallEffect] = []

    @property
    def running(self) -> bool:
        return self._round is not None and self._round.running

    @property
    def recording_by(self) -> Device | None:
        r = self._round
        return r.requester if r is not None and r.running else None

    def next_deadline(self) -> int | None:
        r = self._round
        return r.deadline_ms if r is not None and not r.running else None

    # --- the requester ---------------------------------------------------------

    def request(self, request_id: bytes, participants: Iterable[Device], now_ms: int) -> None:
        if self._round is not None:
            raise UsageError("a recording is already asked for or running")
        others = {p for p in participants if p != self._me}
        self._round = _Round(
            request_id=request_id,
            requester=self._me,
            asked=others,
            deadline_ms=now_ms + CALL_RECORDING_CONSENT_MS,
        )
        self.outbox.append(Recording(request_id=request_id, step=RecordingStep.REQUEST))
        self._maybe_start()

    def stop(self) -> None:
        r = self._round
        if r is None or r.requester != self._me:
            raise UsageError("this device is not recording")
        self._end(r)

    def _maybe_start(self) -> None:
        r = self._round
        if r is None or r.running or r.requester != self._me or not r.granted >= r.asked:
            return
        r.running = True
        self.outbox.append(Recording(request_id=r.request_id, step=RecordingStep.START))
        self.effects += [
            RecordingState(on=True, by=self._me),
            RecordingPermission(allowed=True),
            AppendAudit(action=AuditAction.RECORDING_ON),
        ]

    def _end(self, r: _Round, *, refused_by: tuple[Device, ...] = ()) -> None:
        """The requester ends its round: refused before it ran, or stopped."""
        self._round = None
        self.outbox.append(Recording(request_id=r.request_id, step=RecordingStep.STOP))
        if r.running:
            self.effects += [
                RecordingPermission(allowed=False),
                RecordingState(on=False, by=self._me),
                AppendAudit(action=AuditAction.RECORDING_OFF),
            ]
        else:
            self.effects.append(RecordingRefused(refused_by=refused_by))

    # --- every participant -----------------------------------------------------

    def answer(self, grant: bool) -> None:
        """This device's answer to the current request (or, with ``False``, the
        withdrawal of its consent to a running recording)."""
        r = self._round
        if r is None or r.requester == self._me or self._me not in r.asked:
            raise UsageError("no recording request to answer")
        if grant and r.running and r.my_answer is not True:
            raise UsageError("a recording already runs without this device's consent")
        r.my_answer = grant
        step = RecordingStep.GRANT if grant else RecordingStep.REFUSE
        self.outbox.append(Recording(request_id=r.request_id, step=step))

    def receive(
        self, sender: Device, payload: Recording, participants: frozenset[Device], now_ms: int
    ) -> None:
        """A consent step from ``sender`` (authenticated by the call group)."""
        r = self._round
        step = payload.step
        if step is RecordingStep.REQUEST:
            # Two requests at once: neither may record without the other's consent;
            # the lower request id wins, the other requester gives up.
            if r is not None and r.requester == self._me and payload.request_id < r.request_id:
                self._end(r)
                r = None
            if r is not None:
                return
            self._round = _Round(
                request_id=payload.request_id,
                requester=sender,
                asked=set(participants) - {sender},
                deadline_ms=now_ms + CALL_RECORDING_CONSENT_MS,
            )
            self.effects.append(RecordingRequested(by=sender, request_id=payload.request_id))
            return
        if r is None or r.request_id != payload.request_id:
            return  # about a round that is over here (late or replayed): nothing to do
        if step in (RecordingStep.GRANT, RecordingStep.REFUSE):
            if r.requester != self._me or sender not in r.asked:
                return
            if step is RecordingStep.REFUSE:
                self._end(r, refused_by=(sender,))
                return
            r.granted.add(sender)
            self._maybe_start()
        elif sender == r.requester and r.requester != self._me:
            if step is RecordingStep.START and not r.running:
                r.running = True
                self.effects.append(
                    RecordingState(on=True, by=sender, consented=r.my_answer is True)
                )
            elif step is RecordingStep.STOP:
                self._round = None
                if r.running:
                    self.effects.append(RecordingState(on=False, by=sender))

    def members_changed(self, added: Iterable[Device], removed: Iterable[Device]) -> None:
        """The call group's membership changed (see the module docstring)."""
        r = self._round
        if r is None:
            return
        added_set, removed_set = set(added), set(removed)
        if r.requester in removed_set:
            self._round = None
            if r.running:
                self.effects.append(RecordingState(on=False, by=r.requester))
            return
        r.asked -= removed_set
        if r.requester == self._me:
            if added_set:
                self._end(r)
            else:
                self._maybe_start()

    def tick(self, now_ms: int) -> None:
        r = self._round
        if r is None or r.running or now_ms < r.deadline_ms:
            return
        if r.requester == self._me:
            self._end(r, refused_by=())
        else:
            self._round = None  # the requester gives up too; nothing ran
