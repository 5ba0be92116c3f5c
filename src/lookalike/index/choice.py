"""Which FAISS index a catalog gets: a pure function of (item count, dimension, memory budget).

In the spirit of autofaiss: exact search while it is instant, a graph (HNSW) while the vectors fit in
memory and the graph builds in reasonable time, then inverted lists with product-quantised codes (IVF-PQ)
re-ranked from the vectors on disk. Every threshold is named here, with the measurement behind it.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.errors import IndexChoiceError

KINDS = ("flat", "hnsw", "ivfpq")

# Exact search of 50k 2048-d float32 vectors is ~100M multiply-adds: a few ms on 2 cores, and exact.
FLAT_MAX_ITEMS = 50_000
# HNSW builds at about 4k items/s on 2 cores at 2048-d (benchmarks/search_scale.py); at 2M that is ~10 min
# per million and the graph plus float16 vectors need ~4.4 KB per item. Beyond it IVF-PQ trains in minutes.
HNSW_MAX_ITEMS = 2_000_000
# From here on the stored vectors are float16: half the bytes, and recall@10 against float32 exact search
# stays above 0.99 (tests/test_index.py).
FP16_MIN_ITEMS = 50_000
HNSW_M = 32  # graph degree: the usual sweet spot for 1k-4k-d embeddings
HNSW_EF_CONSTRUCTION = 40  # FAISS's default: half the insertion work of 80; the tuned efSearch makes up recall
# IVF-PQ: about 2*sqrt(N) lists (autofaiss uses 4..16*sqrt(N); fewer lists train faster on few cores and
# the re-ranking makes up the recall), FAISS wants >= 39 training points per list.
IVF_LISTS_PER_SQRT_N = 2
IVF_MIN_POINTS_PER_LIST = 39
IVF_TRAIN_MAX_POINTS_PER_LIST = 64
# Fewer items than this cannot train product quantisers (256 centroids each) and lists; search is exact.
IVF_MIN_ITEMS = 1_000
PQ_DIMS_PER_BYTE = 8  # at most one code byte per 8 dimensions (256 B for 2048-d); fewer when the budget is short
ID_BYTES = 8  # every FAISS id is an int64
GRAPH_BYTES_PER_LINK = 4


@dataclass(frozen=True)
class IndexPlan:
    """What to build: the kind, its build parameters, and why it was chosen."""

    kind: str  # flat | hnsw | ivfpq
    dtype: str = "float32"  # how vectors are kept: float32 | float16
    params: dict[str, Any] = field(default_factory=dict)  # hnsw: M, ef_construction; ivfpq: nlist, m, nbits
    reason: str = ""

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.kind} ({self.dtype}{', ' + extra if extra else ''})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexPlan:
        return cls(kind=data["kind"], dtype=data.get("dtype", "float32"), params=dict(data.get("params", {})),
                   reason=data.get("reason", ""))


def dtype_bytes(dtype: str) -> int:
    return 2 if dtype == "float16" else 4


def estimated_bytes(plan: IndexPlan, count: int, dim: int) -> int:
    """Memory the index needs for ``count`` items (the re-ranking vectors of IVF-PQ stay on disk)."""
    if plan.kind == "flat":
        return count * (dim * dtype_bytes(plan.dtype) + 2 * ID_BYTES)
    if plan.kind == "hnsw":
        links = 2 * plan.params.get("M", HNSW_M) * GRAPH_BYTES_PER_LINK * 1.1  # level 0 has 2M links
        return int(count * (dim * dtype_bytes(plan.dtype) + links + ID_BYTES))
    nlist = plan.params.get("nlist", 1)
    return int(count * (plan.params.get("m", 8) + ID_BYTES) + nlist * dim * 4)


def choose_index(count: int, dim: int, memory_bytes: int, kind: str = "auto") -> IndexPlan:
    """The index for ``count`` vectors of ``dim`` dimensions within ``memory_bytes``.

    ``kind`` other than ``auto`` forces the type and only picks its parameters.

    Raises:
        IndexChoiceError: unknown kind, or no index fits the budget.
    """
    if kind not in ("auto", *KINDS):
        raise IndexChoiceError(f"unknown index kind {kind!r}; choose auto, {', '.join(KINDS)}")
    dtype = "float16" if count >= FP16_MIN_ITEMS else "float32"
    if kind == "ivfpq" and count < IVF_MIN_ITEMS:
        kind = "flat"
        forced = f"IVF-PQ asked for, but {count:,} items < {IVF_MIN_ITEMS:,} cannot train it: exact until then"
    else:
        forced = "asked for"
    candidates = []
    if kind in ("auto", "flat"):
        for dt in dict.fromkeys((dtype, "float16")):
            reason = (f"{count:,} items <= {FLAT_MAX_ITEMS:,}: exact search is instant" if kind == "auto"
                      else forced)
            candidates.append(IndexPlan("flat", dt, {}, reason))
    if kind in ("auto", "hnsw"):
        reason = (f"{count:,} items in ({FLAT_MAX_ITEMS:,}, {HNSW_MAX_ITEMS:,}]: graph search, vectors in memory"
                  if kind == "auto" else "asked for")
        for dt in dict.fromkeys((dtype, "float16")):
            candidates.append(IndexPlan("hnsw", dt, {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION}, reason))
    if kind in ("auto", "ivfpq"):
        candidates.extend(_ivfpq_plans(count, dim, "asked for" if kind == "ivfpq" else
                                       f"{count:,} items: compressed codes in memory, re-ranked from disk"))
    if kind == "auto":
        if count > FLAT_MAX_ITEMS:
            candidates = [p for p in candidates if p.kind != "flat"]
        if count > HNSW_MAX_ITEMS:
            candidates = [p for p in candidates if p.kind != "hnsw"]
    fitting = [p for p in candidates if estimated_bytes(p, count, dim) <= memory_bytes]
    if not fitting:
        smallest = min(candidates, key=lambda p: estimated_bytes(p, count, dim))
        need = estimated_bytes(smallest, count, dim)
        raise IndexChoiceError(
            f"{count:,} vectors of {dim} dimensions need at least {format_bytes(need)} as {smallest.describe()}; "
            f"the budget is {format_bytes(memory_bytes)}: raise --memory or choose --index ivfpq")
    plan = fitting[0]
    if plan is not candidates[0] and kind == "auto":
        plan = IndexPlan(plan.kind, plan.dtype, plan.params,
                         f"{plan.reason}; a larger index would pass the {format_bytes(memory_bytes)} budget")
    return plan


def _ivfpq_plans(count: int, dim: int, reason: str) -> list[IndexPlan]:
    nlist = 2 ** round(math.log2(max(1.0, IVF_LISTS_PER_SQRT_N * math.sqrt(max(count, 1)))))
    nlist = max(1, min(nlist, count // IVF_MIN_POINTS_PER_LIST or 1, 65_536))
    nbits = 8 if count >= 256 else max(1, int(math.log2(max(count, 2))))
    plans = []
    m = max(1, dim // PQ_DIMS_PER_BYTE)
    while m >= 1:
        if dim % m == 0:
            plans.append(IndexPlan("ivfpq", "float16", {"nlist": nlist, "m": m, "nbits": nbits}, reason))
        m //= 2
    return plans


DEFAULT_RECALL = 0.95


@dataclass(frozen=True)
class IndexOptions:
    """What the user asked of a catalog's index (kept in the store's meta table)."""

    kind: str = "auto"
    memory_text: str = "auto"  # as typed: "auto" follows the machine the catalog is opened on
    recall: float = DEFAULT_RECALL

    @property
    def memory(self) -> int:
        return parse_memory(self.memory_text)

    def changed(self, kind: str | None = None, memory: str | int | None = None, recall: float | None = None
                ) -> IndexOptions:
        """A copy with the given fields replaced, each checked.

        Raises:
            IndexChoiceError: unknown kind, unreadable size, recall outside (0, 1].
        """
        kind = self.kind if kind is None else kind
        if kind not in ("auto", *KINDS):
            raise IndexChoiceError(f"unknown index kind {kind!r}; choose auto, {', '.join(KINDS)}")
        memory_text = self.memory_text if memory is None else str(memory)
        parse_memory(memory_text)
        recall = self.recall if recall is None else float(recall)
        if not 0 < recall <= 1:
            raise IndexChoiceError(f"--recall {recall} must be in (0, 1], e.g. 0.95")
        return IndexOptions(kind, memory_text, recall)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "memory": self.memory_text, "recall": self.recall}

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | None) -> IndexOptions:
        import json

        if not text:
            return cls()
        data = json.loads(text)
        return cls(data.get("kind", "auto"), str(data.get("memory", "auto")), float(data.get("recall", DEFAULT_RECALL)))


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_memory(text: str | int | None) -> int:
    """``"4G"``, ``"512M"``, ``"1.5g"`` or a byte count; None or ``"auto"``: half the machine's memory.

    Raises:
        IndexChoiceError: not a size.
    """
    if text is None or (isinstance(text, str) and text.strip().lower() == "auto"):
        return default_memory_budget()
    if isinstance(text, int) or (isinstance(text, str) and text.strip().isdigit()):
        return int(text)
    match = _SIZE.match(text)
    if not match:
        raise IndexChoiceError(f"--memory {text!r} is not a size; write e.g. 4G, 512M or auto")
    value, unit = float(match.group(1)), match.group(2).lower()
    return int(value * 1024 ** " kmgt".index(unit or " "))


def default_memory_budget() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 4 * 1024**3


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GB"
