"""The blind relay: KSMP v3 delivery, directory and prekeys over one WebSocket (docs/protocol.md).

The only server I/O lives here. It routes, orders, stores and forwards
ciphertext, and never imports code that could decrypt it (a test walks the
imports: ``tests/unit/test_server_imports.py``).
"""
