"""Catalog locations that are database URLs: told apart from folders, split into what the driver needs and what
a person may see. Imports no database driver, so naming a folder catalog costs nothing."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from ..core.errors import CatalogError

SCHEMES = ("postgresql://", "postgres://")
DEFAULT_SCHEMA = "lookalike"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def is_database_url(text: object) -> bool:
    """Is this catalog location a PostgreSQL URL (rather than a folder)?"""
    return isinstance(text, str) and text.strip().lower().startswith(SCHEMES)


@dataclass(frozen=True)
class DatabaseURL:
    """A ``postgresql://`` catalog location. ``schema`` (the URL's ``?schema=``, default ``lookalike``) is the
    PostgreSQL schema that holds the catalog's tables, so one database can hold several catalogs."""

    conninfo: str  # for the driver: the URL without ``schema``, password kept (never shown)
    schema: str
    display: str  # for people: the URL without its password
    password: str | None

    @property
    def cache_key(self) -> str:
        """Names this database and schema in a per-user cache folder (the catalog's own id is added)."""
        return hashlib.sha256(self.display.encode()).hexdigest()[:16]

    def redact(self, text: str) -> str:
        """``text`` with the password taken out wherever it appears (driver messages, tracebacks)."""
        if self.password:
            for form in {self.password, quote(self.password, safe="")}:
                text = text.replace(form, "***")
        return text


def parse_database_url(url: str) -> DatabaseURL:
    """Split a ``postgresql://user[:password]@host[:port]/dbname[?schema=name&...]`` URL.

    Raises:
        CatalogError: not a PostgreSQL URL, or a schema name that is not a plain identifier.
    """
    url = url.strip()
    if not is_database_url(url):
        raise CatalogError(f"{url!r} is not a postgresql:// URL")
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), DEFAULT_SCHEMA)
    rest = [(k, v) for k, v in query if k != "schema"]
    password = unquote(parts.password) if parts.password is not None else None
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}@" if parts.username else ""
    display_query = urlencode([*rest, *([("schema", schema)] if schema != DEFAULT_SCHEMA else [])])
    display = urlunsplit(("postgresql", user + host, parts.path, display_query, ""))
    if not _IDENTIFIER.match(schema):
        raise CatalogError(f"{display}: schema {schema[:40]!r} must be a plain name (letters, digits, _)")
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), ""))
    return DatabaseURL(conninfo=conninfo, schema=schema, display=display, password=password)
