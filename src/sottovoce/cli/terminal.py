"""Text that is safe to put on a terminal, and the line a failed command prints.

Split from :mod:`sottovoce.cli.render` so that ``main``'s error path and the
commands that open no account (``server``, ``kt witness``) import no client code.
"""

from __future__ import annotations

# C0 controls and DEL, C1 controls (U+0080-U+009F: 8-bit CSI, OSC, ST...), the Unicode
# bidirectional controls (Unicode Standard Annex #9 §2: LRM, RLM, ALM, the embeddings and
# overrides U+202A-U+202E, the isolates U+2066-U+2069) and the line/paragraph separators.
_CONTROLS = (
    *range(0x00, 0x20), 0x7F, *range(0x80, 0xA0),
    0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A),
    0x2028, 0x2029,
)  # fmt: skip
_ESCAPES = {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _CONTROLS}
_ESCAPES_MULTILINE = {c: e for c, e in _ESCAPES.items() if c != 0x0A}


def safe(text: str, *, multiline: bool = False) -> str:
    """``text`` with every control character shown as a visible escape (``\\x1b``, ``\\u202e``).

    ``multiline`` keeps line feeds (for message bodies and tracebacks); everything
    else that could move the cursor, change the terminal's state or reorder what
    is displayed is escaped. Surrogates that are not valid text are escaped too.
    """
    table = _ESCAPES_MULTILINE if multiline else _ESCAPES
    out = text.translate(table)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in out):
        out = "".join(f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c for c in out)
    return out


def error(message: str) -> str:
    """The one or two lines of a failed command (``message`` may quote the server)."""
    return "sottovoce: error: " + safe(message, multiline=True).replace("\n", "\n  ")
