"""sottovoce: end-to-end encrypted messaging with a blind relay server."""

__version__ = "0.1.0"
