"""MLS (RFC 9420), sans-IO, on `cryptography` + `pyhpke`.

Modules follow the RFC's sections: ``treemath`` (§4, appendix C), ``secret_tree``
(§9), ``key_schedule`` (§8), ``messages`` (§5–7, §10–12 wire structs),
``framing`` (§6), ``transcript`` (§8.2), ``tree``/``treekem`` (§7), ``proposals``
(§12.1–12.3), ``welcome`` (§12.4.3.1), ``epoch`` (an epoch and a staged commit),
``config`` (group policy, PSK lookup), the ``group`` package (§10–§12, the state
machine, one module per operation), ``snapshot`` and ``state`` (a group's state as
a value and as bytes, for storage), and ``public``: the public view (parse and
check external commits, GroupInfo and KeyPackages without any secret), the one
module of this package the server imports.
"""
