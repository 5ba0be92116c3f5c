"""The full-text index of products: the words of each product's labels (its title, such as ``productDisplayName``,
its brand, colour, type...), searched by keyword.

Both backends keep the same plain table ``product_text (key, body)``: one row per product with labels, the body
being its label values (every variant's, each distinct value once). It is written by ``write_products`` in the
transaction that writes the labels, and goes with its product (``ON DELETE CASCADE``), so it is always in step
with the labels, crash or not. The search structure over it is each database's own:

* SQLite: an FTS5 table with external content (``product_fts``, ``content='product_text'``) kept in step by the
  three triggers of the FTS5 manual (sqlite.org/fts5.html, "External Content Tables"), tokenised by ``porter
  unicode61`` (English stemming: "shirts" finds "Shirt"), ranked by FTS5's ``bm25``;
* PostgreSQL: a stored generated ``tsvector`` column (``to_tsvector('english', body)``) with a GIN index, as the
  PostgreSQL manual's "Creating Indexes" (textsearch-tables) shows, ranked by ``ts_rank`` of each word.

A query is looked up word by word (``postings``: every product holding the word, with its score) and the
words' scores added up (``combine``); on SQLite that equals FTS5's bm25 of the words OR-ed. The catalog keeps
each word's postings in memory while the catalog is unchanged (``catalog.keywords``).

The words of a query are matched as a disjunction (any word; a product with more of them, or rarer ones, ranks
higher), so a keyword list works as one input of rank fusion as well as alone. A catalog written before this
index existed gets it built when it is opened for writing (``SQLITE_MISSING`` / ``POSTGRES_MISSING`` checks and
``rebuild``); a read-only one without it is searched by a ``LIKE`` scan of its labels (slower, no stemming).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from .sql import insert_rows, where_in

SQLITE_TABLES = """
CREATE TABLE IF NOT EXISTS product_text (
    key  INTEGER PRIMARY KEY REFERENCES products (key) ON DELETE CASCADE,
    body TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS product_fts USING fts5 (
    body, content='product_text', content_rowid='key', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS product_text_ai AFTER INSERT ON product_text BEGIN
    INSERT INTO product_fts (rowid, body) VALUES (new.key, new.body);
END;
CREATE TRIGGER IF NOT EXISTS product_text_ad AFTER DELETE ON product_text BEGIN
    INSERT INTO product_fts (product_fts, rowid, body) VALUES ('delete', old.key, old.body);
END;
CREATE TRIGGER IF NOT EXISTS product_text_au AFTER UPDATE ON product_text BEGIN
    INSERT INTO product_fts (product_fts, rowid, body) VALUES ('delete', old.key, old.body);
    INSERT INTO product_fts (rowid, body) VALUES (new.key, new.body);
END;
"""

POSTGRES_TABLES = """
CREATE TABLE IF NOT EXISTS product_text (
    key  BIGINT PRIMARY KEY REFERENCES products (key) ON DELETE CASCADE,
    body TEXT NOT NULL,
    doc  tsvector GENERATED ALWAYS AS (to_tsvector('english', body)) STORED
);
CREATE INDEX IF NOT EXISTS product_text_doc ON product_text USING GIN (doc);
"""

# Is the index there? (a catalog written before it existed is not)
SQLITE_MISSING = "SELECT 1 FROM sqlite_master WHERE name = 'product_fts'"
POSTGRES_MISSING = "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'product_text'"

MAX_WORDS = 32  # words of one query looked up (more would only slow the search)
_WORD = re.compile(r"\w+", re.UNICODE)


def body(variants: Mapping[str, Mapping[str, str]] | Iterable[str]) -> str:
    """A product's searchable text: its distinct label values (of every variant) in first-seen order, one space
    apart. ``variants``: variant id -> label name -> value, or the values themselves."""
    values = ([str(v) for labels in variants.values() for v in labels.values()] if isinstance(variants, Mapping)
              else [str(v) for v in variants])
    return " ".join(dict.fromkeys(v.strip() for v in values if v and v.strip()))


def words(text: str) -> list[str]:
    """The words of a query (letters and digits, lower case, each once, at most ``MAX_WORDS``); what the
    backends match. Punctuation and query syntax are dropped, so no user text reaches a query parser."""
    return list(dict.fromkeys(w.lower() for w in _WORD.findall(str(text))))[:MAX_WORDS]


def write_texts(cur, texts: Mapping[int, str]) -> None:
    """Replace the ``product_text`` rows of these product keys (an empty text: no row), inside the caller's
    transaction (``cur``); the same SQL on both backends (``?`` placeholders)."""
    where_in(cur, "DELETE FROM product_text WHERE key IN ({})", list(texts))
    insert_rows(cur, "INSERT INTO product_text (key, body) VALUES {}",
                [(key, text) for key, text in texts.items() if text])


def rebuild(cur) -> int:
    """Fill ``product_text`` from the labels of every product (a catalog from before the index, or rows copied
    in by ``lookalike copy``); returns how many products have text. Inside the caller's transaction."""
    cur.execute("DELETE FROM product_text")
    values: dict[int, list[str]] = {}
    for key, value in cur.execute("SELECT key, value FROM labels ORDER BY key, variant, name").fetchall():
        values.setdefault(int(key), []).append(value)
    texts = {key: body(vals) for key, vals in values.items()}
    write_texts(cur, texts)
    return sum(1 for t in texts.values() if t)


class KeywordIndex:
    """The store's keyword search (a part of ``base.Store``, over its ``_rows`` and ``_begin`` primitives and
    its ``dialect``, "sqlite" or "postgres")."""

    dialect = "sqlite"

    def keyword_search(self, text: str, limit: int) -> list[tuple[int, float]]:
        """Product keys whose labels hold any word of ``text``, best first (``search``); a read-only catalog
        written before the index is scanned instead (``keyword_indexed`` says which)."""
        return search(self.keyword_postings, text, limit)

    def keyword_postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """Every product whose labels hold one word (``postings``): (keys int64, scores float64), unordered."""
        return postings(self._rows, self.dialect, term, indexed=self.keyword_indexed)

    @property
    def keyword_indexed(self) -> bool:
        """Does the store hold the full-text index (False only for a read-only catalog written before it)?"""
        if getattr(self, "_keyword_indexed", None) is None:
            if self.dialect == "sqlite":
                self._keyword_indexed = bool(self._rows(SQLITE_MISSING))
            else:
                self._keyword_indexed = bool(self._rows(POSTGRES_MISSING.replace("%s", "?"), (self.schema,)))
        return self._keyword_indexed

    def rebuild_keyword_index(self) -> int:
        """Index every product's labels again, in one transaction; returns how many products have text."""
        with self._begin() as cur:
            return rebuild(cur)


def postings(rows: Callable[[str, Sequence], list[tuple]], dialect: str, term: str, indexed: bool = True
             ) -> tuple[np.ndarray, np.ndarray]:
    """The products whose labels hold one word (a word of ``words``): (product keys int64, scores float64),
    in no order. Scores are the word's share of a product's relevance, added up over a query's words by
    ``combine``:

    * SQLite: FTS5's ``bm25`` of the one-word query, negated (higher is better). FTS5's bm25 of a query of
      several phrases is the sum of each phrase's term (Robertson and Zaragoza 2009; sqlite.org/fts5.html,
      "bm25"), so the sum over words equals FTS5's own ranking of the words OR-ed;
    * PostgreSQL: ``ts_rank`` of the one-word ``tsquery``;
    * ``indexed`` False (a read-only catalog written before the index): a ``LIKE`` scan of the labels, 1 per
      product that holds the word, so the sum counts the words found (slower, no stemming).
    """
    if not indexed:
        pattern = "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        found = rows("SELECT DISTINCT key, 1.0 FROM labels WHERE LOWER(value) LIKE ? ESCAPE '\\'", (pattern,))
    elif dialect == "sqlite":
        found = rows("SELECT rowid, -bm25(product_fts) FROM product_fts WHERE product_fts MATCH ?", (f'"{term}"',))
    else:
        found = rows("SELECT key, ts_rank(doc, q) FROM product_text, to_tsquery('english', ?) q WHERE doc @@ q",
                     (term,))
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    keys, scores = zip(*found, strict=True)
    return np.asarray(keys, np.int64), np.asarray(scores, np.float64)


def combine(lists: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Several words' ``postings`` as one: (each product key once, int64 sorted; the sum of its scores)."""
    lists = [x for x in lists if len(x[0])]
    if not lists:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    if len(lists) == 1:
        return lists[0]
    keys, inverse = np.unique(np.concatenate([k for k, _ in lists]), return_inverse=True)
    return keys, np.bincount(inverse, weights=np.concatenate([s for _, s in lists]), minlength=len(keys))


def best(keys: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The order of ``combine``'s result, best first: higher score, then lower key (a stable answer)."""
    return np.lexsort((keys, -scores))


def search(postings_of: Callable[[str], tuple[np.ndarray, np.ndarray]], text: str, limit: int
           ) -> list[tuple[int, float]]:
    """Products whose labels hold any word of ``text``: (product key, score) best first, at most ``limit``.
    ``postings_of(word)``: that word's ``postings``. The words are OR-ed (a product with more of them, or rarer
    ones, ranks higher). Scores only order one list: higher is better.

    Returns an empty list for text without any word."""
    terms = words(text)
    if not terms or limit <= 0:
        return []
    keys, scores = combine([postings_of(t) for t in terms])
    order = best(keys, scores)[:limit]
    return [(int(k), float(s)) for k, s in zip(keys[order], scores[order], strict=True)]
