"""``python -m sottovoce``: the same entry point as the ``sottovoce`` command."""

from __future__ import annotations

import sys

from sottovoce.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
