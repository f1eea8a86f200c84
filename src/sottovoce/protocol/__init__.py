"""KSMP v3 delivery contract: the wire events, sans-IO, shared by server and client.

The contract in prose, with every event, field, limit and error code, is
docs/protocol.md.
"""
