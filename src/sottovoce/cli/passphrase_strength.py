"""How strong a passphrase must be wherever one is chosen (create, link, recover, change).

The passphrase is all that protects the keys and the history on a stolen disk:
Argon2id makes each guess cost ~0.4 s of a core, it cannot make a guessable
passphrase long. So a new one must have at least :data:`MIN_PASSPHRASE_CHARS`
characters and score at least :data:`MIN_SCORE` with zxcvbn (Dropbox's
estimator: dictionaries of common passwords, names and words, keyboard walks,
repeats, sequences, dates, l33t substitutions, and the username itself), where
3 means "about 10^8 guesses or more: safe from an offline attack on a slow
hash". zxcvbn (MIT, pure Python) is imported only here, when one is chosen.
"""

from __future__ import annotations

#: Shortest passphrase accepted: anything shorter is refused before it is scored.
MIN_PASSPHRASE_CHARS = 8
#: zxcvbn's score (0-4) a new passphrase needs.
MIN_SCORE = 3
#: zxcvbn scores at most this many characters (its own limit); a longer one is scored
#: by its start, which only ever under-rates it.
_SCORED_CHARS = 72
#: What would do, said with every refusal.
ADVICE = (
    f"use {MIN_PASSPHRASE_CHARS} or more characters that are not a common password, "
    "a name or a pattern; four unrelated words will do"
)


def weak_passphrase(passphrase: str, username: str = "") -> str | None:
    """Why ``passphrase`` is too weak to seal an account, or ``None`` if it will do."""
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        return f"the passphrase is too short: {ADVICE}"
    from zxcvbn import zxcvbn

    inputs = ["sottovoce", *([username] if username else [])]
    result = zxcvbn(passphrase[:_SCORED_CHARS], user_inputs=inputs)
    if int(result["score"]) >= MIN_SCORE:
        return None
    warning = str(result["feedback"].get("warning") or "").strip().rstrip(".")
    if username and username.lower() in passphrase.lower():
        warning = "it contains the username"
    why = f" ({warning[:1].lower()}{warning[1:]})" if warning else ""
    return f"the passphrase is too easy to guess{why}: {ADVICE}"
