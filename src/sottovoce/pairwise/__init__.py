"""1:1 sessions over vodozemac's Olm (docs/architecture.md §1:1 messages).

vodozemac types never leave this package.
"""

from sottovoce.pairwise.account import OlmAccount
from sottovoce.pairwise.prekeys import PrekeyBundle, SignedPrekey
from sottovoce.pairwise.session import OlmEnvelope, PairwiseSession

__all__ = ["OlmAccount", "OlmEnvelope", "PairwiseSession", "PrekeyBundle", "SignedPrekey"]
