"""The version, in a module of its own: pyproject.toml reads it from here, and modules
that need it import it without importing the package root."""

__version__ = "0.1.0"
