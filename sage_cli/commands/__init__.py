"""One module per command (or command group); each stays thin and imports heavy libraries lazily."""
