"""Thin typed wrappers over `cryptography` and `pyhpke`.

Sans-IO: randomness is always passed in as a :data:`Random` callable, so tests
are deterministic and no core module reads OS randomness itself.
"""

from sottovoce.crypto.rng import Random

__all__ = ["Random"]
