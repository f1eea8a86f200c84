"""Who may find this account (``client.discovery``): its discovery mode on the server,
and the prefix search over public accounts (docs/protocol.md §Discovery).

* **public**: found by a prefix search (``find``) and by its exact name;
* **default**: found only by its exact name (a lookup, with a proof of work);
* **strict**: the server answers about it as about a name that does not exist,
  except to the account's own devices.

The mode is the only thing about its reach the account tells the server. A search
pays a proof of work of its own each time (client/proof_of_work.py solves it).
"""

from __future__ import annotations

from sottovoce.client.ports import Link
from sottovoce.errors import RemoteError, UsageError
from sottovoce.protocol.discovery import (
    DISCOVERY_RESULT,
    FIND_LIMIT,
    FIND_MIN_PREFIX,
    FIND_RESULT,
    MODES,
    DiscoverySet,
    Find,
)
from sottovoce.protocol.fields import ID_RE


class Discovery:
    def __init__(self, link: Link) -> None:
        self._link = link

    async def mode(self, new: str | None = None) -> str:
        """The account's mode on the server, after setting it to ``new`` if given."""
        if new is not None and new not in MODES:
            raise UsageError(f"discovery mode must be one of {', '.join(MODES)}")
        _, data = await self._link.request(DiscoverySet(mode=new),
                                           frozenset({DISCOVERY_RESULT}))
        mode = data.get("mode")
        if mode not in MODES:
            raise RemoteError("the server answered with an unknown discovery mode")
        return str(mode)

    async def find(self, prefix: str) -> list[str]:
        """The public accounts whose name starts with ``prefix`` (at most FIND_LIMIT)."""
        if len(prefix) < FIND_MIN_PREFIX:
            raise UsageError(f"a search needs at least {FIND_MIN_PREFIX} characters")
        _, data = await self._link.request(Find(prefix=prefix), frozenset({FIND_RESULT}))
        names = data.get("usernames")
        if not isinstance(names, list) or len(names) > FIND_LIMIT or not all(
            isinstance(n, str) and ID_RE.fullmatch(n) and n.startswith(prefix) for n in names
        ):
            raise RemoteError("the server answered a search with a malformed list")
        return [str(n) for n in names]
