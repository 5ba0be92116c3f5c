"""Precomputed recommendations for a whole catalog: every product's k most similar products, written to a file.

Rows are ``item_id, rank, similar_id, similarity`` (plus the ``group_by`` label of the similar product), ids
being product ids, in product key order, ranks from 1, best first. A product queries with every one of its
photos through the photo index, and another product scores its best (query photo, photo) pair, as
``Catalog.similar`` ranks them (photo hits grouped into products, each at its best photo). Formats: Parquet
(one row group per part), CSV, JSON lines, chosen by ``--format`` or the file extension.

Rules, the same for every product:

* a product is never recommended to itself, nor found by its own photos or their exact copies (same content
  hash), so a product sharing a photo with it is found by its other photos only;
* ``where`` restricts the candidates (what may be recommended); every item still gets a row set.
  ``queries_where`` restricts which items get recommendations. They are separate because both uses are
  common: "for every product, similar products in stock" and "only for the women's range";
* ``dedupe``: one candidate per near-duplicate group of the photos they are found by (``duplicates.py``),
  none found by a photo of the groups of the product's own photos;
* ``group_by LABEL``: one candidate per value of that (product) label (e.g. one per ``productDisplayName``: not the
  same product in five colours); items without the label are each their own group. The item's own value
  is allowed (another product with the same name may still be a fine recommendation).

Filters are applied to an over-fetched neighbour list; a row that comes up short while its list was full is
searched again with four times as many neighbours (up to ``MAX_FETCH``), so every item gets k results when
that many qualifying candidates exist.

Work is batched (blocks of queries through ``catalog.index.search``, whatever index the catalog has) and
threaded (``neighbours.ordered_map``), or spread over Ray actors (``recommend_ray``), and written
incrementally: finished blocks go to part files in
``<out>.partial/`` with a state file recording the last finished item key and the options. An interrupted
run started again with the same options resumes after that key; other options start over. At the end the
parts are joined into ``out`` (written to a temporary name, then renamed) and the partial folder goes; an
``out`` ending in ``/`` keeps the parts as a partitioned dataset (the partial folder renamed into place).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..catalog.query import Where, check_k
from ..catalog.ranking import Ranking
from ..core.errors import OutputError, QueryError
from .duplicates import DEFAULT_THRESHOLD, group_codes
from .neighbours import (
    DEFAULT_BLOCK,
    DEFAULT_THREADS,
    PhotoOwners,
    ordered_map,
    product_blocks,
    progress_bar,
    search_block,
)
from .recommend_rules import RankRules, rank_rules

log = logging.getLogger(__name__)

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl"}
MAX_FETCH = 4096
PART_ROWS = 500_000  # rows per part file: a kill loses at most this much work
PART_SECONDS = 60.0  # ... or this long
STATE_FILE = "state.json"


@dataclass
class RecommendReport:
    path: str
    format: str
    items: int  # items with recommendations in the file
    rows: int
    computed: int  # items computed by this run (the rest came from an interrupted run)
    resumed: bool
    short: int  # items with fewer than k recommendations (not enough qualifying candidates)
    seconds: float

    @property
    def items_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        resumed = f", {self.items - self.computed} from the interrupted run" if self.resumed else ""
        short = f"; {self.short} items have fewer than k" if self.short else ""
        return (f"{self.path}: {self.rows} recommendations for {self.items} items{resumed} in {self.seconds:.1f} s "
                f"({self.items_per_second:.0f} items/s){short}")

    def to_dict(self) -> dict:
        return {**asdict(self), "items_per_second": self.items_per_second}


def recommend(catalog, k: int, out: str | Path, *, fmt: str | None = None, where: Where = None,
              queries_where: Where = None, dedupe: bool = False, threshold: float = DEFAULT_THRESHOLD,
              group_by: str | None = None, block: int = DEFAULT_BLOCK, threads: int = DEFAULT_THREADS,
              resume: bool = True, progress: bool | None = None, engine=None, ranking: Ranking | None = None,
              rules: bool = True) -> RecommendReport:
    """Write every item's (or every ``queries_where`` item's) k most similar items to ``out``: a file, or with
    a trailing ``/`` (or an existing folder) a partitioned Parquet dataset of part files.

    ``engine`` (a ``RayEngine``) spreads the blocks of queries over Ray actors that each open the catalog's
    index read-only (a folder catalog must be on a file system every node sees; a database catalog is reached
    by its URL); rows, order and resuming are the same as on this machine.

    Raises:
        QueryError: bad k, ``where``, ``queries_where``, ``group_by`` label or threshold; a rule naming a label
            the catalog does not have.
        UnknownItemError: a pinned id that is no product of the catalog.
        OutputError: unknown format, or ``out`` cannot be written.
    """
    started = time.perf_counter()
    check_k(k)
    folder_out = str(out).endswith(("/", os.sep)) or Path(out).is_dir()
    out = Path(out)
    fmt = _format(out, fmt, folder_out)
    candidates = catalog.allowed(where)
    queries = catalog.allowed(queries_where)
    ranking = catalog.ranking_for(ranking, rules)
    ranked = ranking.active
    if group_by is not None and group_by not in catalog.store.label_names():
        labels = ", ".join(catalog.store.label_names()) or "none (index from a manifest to add labels)"
        raise QueryError(f"unknown label {group_by!r} for --group-by; labels in this catalog: {labels}")
    index = catalog.index
    table, products = catalog.table, catalog.products
    all_keys = np.array(sorted(products.photos_of), dtype=np.int64)
    size = int(all_keys[-1]) + 1 if len(all_keys) else 1
    excluded = catalog.excluded_products(ranking)
    if excluded:
        out_keys = np.fromiter(excluded, np.int64, len(excluded))
        candidates = np.setdiff1d(all_keys if candidates is None else candidates, out_keys)
    photo_size = (max(table.id_by_key) + 1) if table.id_by_key else 1
    n_candidates = len(all_keys) if candidates is None else len(np.intersect1d(candidates, all_keys))
    n_queries = len(all_keys) if queries is None else len(np.intersect1d(queries, all_keys))
    if candidates is not None and n_candidates == 0:
        if excluded:
            raise QueryError("the rules' --exclude (with --where) leave no item to recommend; check "
                             "`lookalike rules show` and the label values")
        raise QueryError(f"--where {where} matches no item: nothing could be recommended; check the label values "
                         "with `lookalike status` or the web page's facets")

    content = _content_codes(table, photo_size)
    groups = group_codes(catalog, threshold, progress=progress, threads=threads) if dedupe else None
    labels, label_values = _label_codes(catalog, group_by, size) if group_by else (None, None)
    ids = np.empty(size, dtype=object)
    for key, item_id in products.id_by_key.items():
        ids[key] = item_id

    options = {"k": k, "format": fmt, "where": catalog.check_where(where), "dedupe": dedupe,
               "threshold": threshold if dedupe else None, "group_by": group_by,
               "queries_where": catalog.check_where(queries_where), "generation": catalog.store.generation(),
               "items": len(all_keys), "rules": ranking.to_dict() if ranked else None}
    rank, texts = rank_rules(catalog, ranking, k, size) if ranked else (None, None)
    parts = _Parts(out, fmt, options, resume, folder_out)
    allowed_photos = None if candidates is None else products.photo_keys(candidates)
    pool = rank.pool if rank is not None else k
    work = BlockWork(k=k, candidates=allowed_photos, limit=min(MAX_FETCH, len(table.id_by_key)),
                     first_fetch=pool + 1 + (2 * pool if dedupe or group_by or not products.one_to_one else 0),
                     n_candidates=n_candidates, content=content, groups=groups, labels=labels,
                     owners=PhotoOwners(products.products_of),
                     allowed=None if candidates is None else np.isin(np.arange(size), candidates), rank=rank)
    report = RecommendReport(path=str(out), format=fmt, items=parts.items, rows=parts.rows, computed=0,
                             resumed=parts.done_key >= 0, short=parts.short, seconds=0.0)
    if engine is None:
        blocks = product_blocks(catalog, block, keys=queries, after=parts.done_key)
        results = ordered_map(lambda blk: work(index, *blk), blocks, threads)
    else:
        from .recommend_ray import recommend_on_ray

        key_blocks = _key_blocks(all_keys, block, queries, parts.done_key)
        results = recommend_on_ray(engine, catalog, work, key_blocks)
    with progress_bar(n_queries - parts.items, "recommend", progress) as bar:
        for qkeys, (item, ranks, similar, sims, flags), short_rows in results:
            columns = {"item_id": ids[item], "rank": ranks, "similar_id": ids[similar], "similarity": sims}
            if label_values is not None:
                columns[group_by] = label_values[similar]
            if texts is not None:
                columns["rules"] = _object_array(texts.column(similar, flags))
            parts.add(columns, last_key=int(qkeys[-1]), items=len(qkeys), short=short_rows)
            report.computed += len(qkeys)
            bar.update(len(qkeys))
    parts.finish()
    report.items, report.rows, report.short = parts.items, parts.rows, parts.short
    report.seconds = time.perf_counter() - started
    log.info("%s", report.summary())
    return report


@dataclass
class BlockWork:
    """What one block of query products needs besides the index: the rules every product is held to.
    Picklable, so Ray actors run exactly the work this process would."""

    k: int
    candidates: np.ndarray | None  # photo keys the index may return (those of the allowed products)
    limit: int
    first_fetch: int
    n_candidates: int
    content: np.ndarray  # dense photo key -> content code
    groups: np.ndarray | None  # dense photo key -> near-duplicate group
    labels: np.ndarray | None  # dense product key -> group_by code
    owners: PhotoOwners
    allowed: np.ndarray | None  # dense product key -> may be recommended
    rank: RankRules | None = None  # ranking rules: collect ``rank.pool`` candidates, then order them

    def __call__(self, index, qkeys: np.ndarray, photo_keys: np.ndarray, qvecs: np.ndarray,
                 owner: np.ndarray) -> tuple[np.ndarray, tuple, int]:
        """(query product keys, (product key, rank, similar key, similarity, rule flags) rows in key and rank
        order, short products), from the block's photos (``photo_keys``, vectors ``qvecs``, ``owner``: each photo row's
        position in ``qkeys``)."""
        fetch = max(1, min(self.first_fetch, self.limit))
        picked: list[list[tuple]] = [[] for _ in qkeys]
        todo = np.arange(len(qkeys))
        while len(todo):
            rows = np.flatnonzero(np.isin(owner, todo))
            sims, keys = search_block(index, qvecs[rows], fetch, self.candidates)
            more = []
            for q in todo.tolist():
                mine = owner[rows] == q
                picked[q] = self._pick(int(qkeys[q]), photo_keys[rows[mine]], sims[mine], keys[mine])
                if self.rank is not None:
                    picked[q] = self.rank.apply(int(qkeys[q]), qvecs[rows[mine]], picked[q], index)
                full = keys.shape[1] == fetch and bool((keys[mine, -1] >= 0).any())
                if len(picked[q]) < self.k and full and fetch < self.limit:
                    more.append(q)
            todo = np.array(more, dtype=np.int64)
            fetch = min(self.limit, fetch * 4)
        counts = np.array([len(p) for p in picked], dtype=np.int64)
        item = np.repeat(qkeys, counts)
        ranks = np.concatenate([np.arange(1, c + 1, dtype=np.int32) for c in counts]) if len(counts) else \
            np.zeros(0, np.int32)
        similar = np.array([r[0] for row in picked for r in row], dtype=np.int64)
        sims_out = np.array([r[1] for row in picked for r in row], dtype=np.float32)
        flags = np.array([r[2] for row in picked for r in row], dtype=np.int8) if self.rank is not None else \
            np.zeros(len(similar), np.int8)
        short_rows = int((counts < min(self.k, self.n_candidates)).sum())
        return qkeys, (item, ranks, similar, sims_out, flags), short_rows

    def _pick(self, product: int, own_photos: np.ndarray, sims: np.ndarray, keys: np.ndarray
              ) -> list[tuple[int, float, int]]:
        """The first k (with rules: ``rank.pool``) products of one query product's photo hits merged best first,
        as (product key, similarity, the photo it was found by): never itself, never by a photo of its own
        photos' content (or near-duplicate groups), one per group and label value."""
        want = self.rank.pool if self.rank is not None else self.k
        flat_keys, flat_sims = keys.ravel(), sims.ravel()
        order = np.lexsort((flat_keys, -np.nan_to_num(flat_sims, nan=-np.inf)))
        own_content = set(self.content[own_photos].tolist())
        own_groups = set(self.groups[own_photos].tolist()) if self.groups is not None else set()
        seen: set[int] = {product}
        seen_groups: set[int] = set()
        seen_labels: set[int] = set()
        out: list[tuple[int, float]] = []
        for j in order.tolist():
            photo = int(flat_keys[j])
            if photo < 0 or int(self.content[photo]) in own_content:
                continue
            group = int(self.groups[photo]) if self.groups is not None else None
            if group is not None and (group in own_groups or group in seen_groups):
                continue
            for other in self.owners.of(photo).tolist():
                if other in seen or (self.allowed is not None and not self.allowed[other]):
                    continue
                if self.labels is not None:
                    code = int(self.labels[other])
                    if code in seen_labels:
                        continue
                    seen_labels.add(code)
                seen.add(other)
                out.append((other, float(flat_sims[j]), photo))
                if group is not None:
                    seen_groups.add(group)
                    break  # one product per near-duplicate group
                if len(out) == want:
                    return out
            if len(out) == want:
                return out
        return out


def _key_blocks(all_keys: np.ndarray, block: int, queries: np.ndarray | None, after: int) -> list[np.ndarray]:
    """The query keys of each block, cut as ``query_blocks`` cuts them (``block`` stored items in key order
    above ``after``, then only ``queries``), so every FAISS call sees the same queries on Ray as here."""
    keys = all_keys[all_keys > after]
    wanted = None if queries is None else np.unique(np.asarray(queries, dtype=np.int64))
    out = []
    for start in range(0, len(keys), block):
        chunk = keys[start:start + block]
        if wanted is not None:
            chunk = chunk[np.isin(chunk, wanted, assume_unique=True)]
        if len(chunk):
            out.append(chunk)
    return out


def _content_codes(table, size: int) -> np.ndarray:
    """Dense key -> smallest key with the same content hash (its own key when unique)."""
    codes = np.arange(size, dtype=np.int64)
    for keys in table.keys_by_hash.values():
        if len(keys) > 1:
            members = np.fromiter(keys, np.int64)
            codes[members] = members.min()
    return codes


def _label_codes(catalog, name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense key -> code of its ``name`` value (items without it get a code of their own), and key -> value."""
    rows = catalog.store.label_values(name)
    values = np.full(size, None, dtype=object)
    codes = np.arange(size, dtype=np.int64) + size  # unique per key, above every value code
    number: dict[str, int] = {}
    for key, value in rows:
        if key < size:
            codes[key] = number.setdefault(value, len(number))
            values[key] = value
    return codes, values


def _format(out: Path, fmt: str | None, folder: bool = False) -> str:
    if folder:  # a partitioned dataset: Parquet unless asked otherwise
        fmt = fmt or "parquet"
    if fmt is not None:
        if fmt not in set(FORMATS.values()):
            raise OutputError(f"unknown format {fmt!r}; choose parquet, csv or jsonl")
        return fmt
    found = FORMATS.get(out.suffix.lower())
    if found is None:
        raise OutputError(f"{out}: cannot tell the format from the extension; name it .parquet, .csv or "
                          ".jsonl, or pass --format")
    if found == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise OutputError("writing Parquet needs pyarrow: pip install pyarrow, or write .csv") from exc
    return found


class _Parts:
    """Finished blocks as part files in ``<out>.partial/``, a state file saying how far they go, and the
    final join into ``out``."""

    def __init__(self, out: Path, fmt: str, options: dict, resume: bool, keep_parts: bool = False):
        self.out, self.fmt, self.options, self.keep_parts = out, fmt, options, keep_parts
        self.folder = out.with_name(out.name + ".partial")
        if keep_parts and out.exists() and any(out.iterdir()):
            raise OutputError(f"{out}/ is not empty; a partitioned --out must be a new or empty folder")
        self.done_key, self.items, self.rows, self.short, self.files = -1, 0, 0, 0, []
        self._buffer: list[dict] = []
        self._buffered_rows = 0
        self._pending = {"last_key": -1, "items": 0, "short": 0}
        self._since = time.monotonic()
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            state = self._state() if resume else None
            if state is not None and state.get("options") == _jsonable(options):
                self.done_key, self.items, self.rows = state["done_key"], state["items"], state["rows"]
                self.short, self.files = state["short"], state["files"]
                log.info("resuming %s after item key %d (%d items done)", out, self.done_key, self.items)
            else:
                if state is not None:
                    log.warning("%s holds an interrupted run with other options; starting over", self.folder)
                shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(exist_ok=True)
            for stray in self.folder.iterdir():  # parts written after the last state update
                if stray.name != STATE_FILE and stray.name not in self.files:
                    stray.unlink()
        except OSError as exc:
            raise OutputError(f"{out}: cannot write here ({exc.strerror}); choose another --out") from exc

    def _state(self) -> dict | None:
        try:
            return json.loads((self.folder / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None

    def add(self, columns: dict, last_key: int, items: int, short: int) -> None:
        self._buffer.append(columns)
        self._buffered_rows += len(columns["rank"])
        self._pending = {"last_key": last_key, "items": self._pending["items"] + items,
                         "short": self._pending["short"] + short}
        if self._buffered_rows >= PART_ROWS or time.monotonic() - self._since >= PART_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._pending["last_key"] < 0:
            return
        name = f"part-{len(self.files):06d}.{self.fmt}"
        columns = {c: np.concatenate([b[c] for b in self._buffer]) for c in self._buffer[0]} if self._buffer else {}
        tmp = self.folder / (name + ".tmp")
        _write_part(tmp, self.fmt, columns)
        os.replace(tmp, self.folder / name)
        self.files.append(name)
        self.done_key = self._pending["last_key"]
        self.items += self._pending["items"]
        self.short += self._pending["short"]
        self.rows += self._buffered_rows
        state = {"options": _jsonable(self.options), "done_key": self.done_key, "items": self.items,
                 "rows": self.rows, "short": self.short, "files": self.files}
        tmp_state = self.folder / (STATE_FILE + ".tmp")
        tmp_state.write_text(json.dumps(state))
        os.replace(tmp_state, self.folder / STATE_FILE)
        self._buffer, self._buffered_rows = [], 0
        self._pending = {"last_key": -1, "items": 0, "short": 0}
        self._since = time.monotonic()

    def finish(self) -> None:
        """Join the parts into ``out`` (atomically) and drop the partial folder; or, for a partitioned ``out``,
        rename the folder of parts into place (its state file dropped)."""
        self.flush()
        if self.keep_parts:
            (self.folder / STATE_FILE).unlink(missing_ok=True)
            if self.out.exists():
                self.out.rmdir()  # empty (checked when the run started)
            os.replace(self.folder, self.out)
            return
        tmp = self.out.with_name(self.out.name + ".tmp")
        parts = [self.folder / name for name in self.files]
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            schema = _schema(self.options["group_by"], bool(self.options.get("rules")))
            with pq.ParquetWriter(tmp, schema) as writer:
                for part in parts:
                    writer.write_table(pq.read_table(part, schema=schema))
        else:
            with open(tmp, "wb") as f:
                if self.fmt == "csv":
                    f.write(_csv_line(_column_names(self.options["group_by"], bool(self.options.get("rules"))))
                            .encode())
                for part in parts:
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, f, 1 << 20)
        os.replace(tmp, self.out)
        shutil.rmtree(self.folder, ignore_errors=True)


def _column_names(group_by: str | None, rules: bool = False) -> list[str]:
    return ["item_id", "rank", "similar_id", "similarity"] + ([group_by] if group_by else []) + \
        (["rules"] if rules else [])


def _schema(group_by: str | None, rules: bool = False):
    import pyarrow as pa

    fields = [("item_id", pa.string()), ("rank", pa.int32()), ("similar_id", pa.string()),
              ("similarity", pa.float32())]
    if group_by:
        fields.append((group_by, pa.string()))
    if rules:
        fields.append(("rules", pa.list_(pa.string())))
    return pa.schema(fields)


def _object_array(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _write_part(path: Path, fmt: str, columns: dict) -> None:
    names = list(columns)
    rules = "rules" in columns
    group_by = next((n for n in names[4:] if n != "rules"), None)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _schema(group_by, rules)
        table = pa.table([pa.array(list(columns[f.name]) if f.name == "rules" else columns[f.name], type=f.type)
                          for f in schema], schema=schema)
        pq.write_table(table, path)
        return
    sims = [f"{s:.6f}" for s in columns["similarity"].tolist()]
    extra = ([columns[group_by].tolist()] if group_by else []) + ([columns["rules"].tolist()] if rules else [])
    rows = zip(columns["item_id"].tolist(), columns["rank"].tolist(), columns["similar_id"].tolist(), sims,
               *extra, strict=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        if fmt == "csv":
            if rules:
                rows = (row[:-1] + ("; ".join(row[-1]),) for row in rows)
            csv.writer(f).writerows(rows)
        else:
            dumps = json.dumps
            for row in rows:
                line = (f'{{"item_id": {dumps(row[0])}, "rank": {row[1]}, "similar_id": {dumps(row[2])}, '
                        f'"similarity": {row[3]}')
                if group_by:
                    line += f", {dumps(group_by)}: {dumps(row[4])}"
                if rules:
                    line += f', "rules": {dumps(row[-1])}'
                f.write(line + "}\n")


def _csv_line(values: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(values)
    return buf.getvalue()


def _jsonable(options: dict) -> dict:
    return json.loads(json.dumps(options))
