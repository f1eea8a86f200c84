"""1:1 calls, sans-IO: the signals two devices exchange inside end-to-end
encryption, and the call state machine that drives them (docs/calls.md).

The asyncio/aiortc side that turns the machine's effects into media lives in
:mod:`sottovoce.client.calls`.
"""
