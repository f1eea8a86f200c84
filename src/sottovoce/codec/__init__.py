"""Wire codecs. Only :class:`~sottovoce.errors.DecodeError` escapes a decoder."""
