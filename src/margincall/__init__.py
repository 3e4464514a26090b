"""margincall: Python tooling for the margincall margin protocol."""

__version__ = "0.1.0"
