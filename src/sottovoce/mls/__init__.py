"""MLS (RFC 9420), sans-IO, on `cryptography` + `pyhpke`.

Modules follow the RFC's sections: ``treemath`` (§4, appendix C), ``secret_tree``
(§9), ``key_schedule`` (§8), ``messages`` (§5–7, §10–12 wire structs),
``framing`` (§6), ``transcript`` (§8.2), ``tree``/``treekem`` (§7), ``group``
(§12, the state machine), ``state`` (a group's state as bytes, for storage), and
``public``: the public view (parse and check external commits, GroupInfo and
KeyPackages without any secret), the one module of this package the server imports.
"""
