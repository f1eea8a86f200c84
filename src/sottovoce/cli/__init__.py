"""The `sottovoce` command."""
