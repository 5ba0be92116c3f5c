"""The REST API and web page: ``create_app(ServeSettings(catalog=...))`` or ``lookalike serve``."""

from .app import create_app
from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
