"""The package version (kept here, at the bottom layer, so that every layer can print it)."""

__version__ = "0.1.0"
