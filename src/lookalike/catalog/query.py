"""What a search returns, and the small rules shared by every way of asking (CLI, API, web)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ..core import storage
from ..core.errors import QueryError
from ..store.base import UPLOAD_PREFIX

Where = Mapping[str, str] | Sequence[str] | None


@dataclass(frozen=True)
class Match:
    """One recommended item. ``distance`` is euclidean between unit vectors, as the seed notebooks
    reported it; ``similarity`` is the cosine. They carry the same order: d = sqrt(2 - 2 s)."""

    rank: int
    id: str
    path: str
    similarity: float
    distance: float
    labels: dict[str, str] = field(default_factory=dict)
    predicted: dict[str, float] = field(default_factory=dict)  # labels from `lookalike tag`: name -> probability
    photo: str = ""  # the photo that matched (the product's best one)
    photos: int = 1  # how many photos the product has
    product: str = ""  # the product the photo belongs to (== id for product results)
    variants: list[str] = field(default_factory=list)  # with a filter: the product's variants that match it
    rules: list[str] = field(default_factory=list)  # ranking rules that moved it (``ranking.py``): "boost a=b +0.1"
    found_by: list[str] = field(default_factory=list)  # words searched: "vector" and/or "keyword" (``keywords.py``)

    def __post_init__(self) -> None:
        # Float rounding can put the cosine of unit vectors a hair outside [-1, 1]; never show 1.0000013.
        object.__setattr__(self, "similarity", clip_similarity(self.similarity))
        object.__setattr__(self, "distance", min(2.0, max(0.0, float(self.distance))))

    @property
    def missing(self) -> bool:
        """The item's photo is gone from this machine (deleted or moved since indexing): results keep it,
        marked, as its vector still stands for the product; ``index --prune`` removes it."""
        return photo_gone(self.path)

    def to_dict(self) -> dict:
        return {**asdict(self), "missing": self.missing}


def match_rows(rows: Sequence[tuple[str, str, str, str, int, str, dict, dict, list]], sims: Sequence[float],
               start: int = 1) -> list[Match]:
    """``Match`` rows in bulk, ranked from ``start``: for each (id, path, photo, product, photos, labels,
    predicted, variants) with its cosine in ``sims``. The cosines are clipped to [-1, 1] and turned into
    distances as one NumPy pass, and each row is made without the per-row checks of ``Match.__init__``
    (what a search's 50 candidates cost was mostly those)."""
    sim = np.clip(np.asarray(sims, np.float64), -1.0, 1.0)
    dist = np.sqrt(np.clip(2.0 - 2.0 * sim, 0.0, 4.0))
    out = []
    new = object.__new__
    for rank, (row, s, d) in enumerate(zip(rows, sim.tolist(), dist.tolist(), strict=True), start=start):
        m = new(Match)
        m.__dict__.update(rank=rank, id=row[0], path=row[1], similarity=s, distance=d, labels=row[5],
                          predicted=row[6], photo=row[2], photos=row[4], product=row[3], variants=row[7], rules=[],
                          found_by=[])
        out.append(m)
    return out


def amended(match: Match, **changes: object) -> Match:
    """A copy of ``match`` with its ``rank``, ``rules`` or ``found_by`` changed: what ``dataclasses.replace``
    does, without re-running the checks of fields it keeps (a fused, re-ranked search makes hundreds of these)."""
    if not changes.keys() <= {"rank", "rules", "found_by"}:
        raise ValueError(f"amended changes rank, rules and found_by only, not {sorted(changes)}")
    out = object.__new__(type(match))
    out.__dict__.update(match.__dict__)
    out.__dict__.update(changes)
    return out


def photo_gone(path: str) -> bool:
    """Is an item's local photo file gone? Object-store URLs and uploads kept in a database are not looked at
    (a stat per result, no network)."""
    if str(path).startswith(UPLOAD_PREFIX) or storage.is_url(path):
        return False
    return not os.path.exists(path)


def clip_similarity(similarity: float) -> float:
    """A cosine kept within [-1, 1] (rounding of float32 and float16 dot products can leave it)."""
    return min(1.0, max(-1.0, float(similarity)))


def distance_from_similarity(similarity: float) -> float:
    """Euclidean distance between unit vectors with this cosine, in [0, 2]."""
    return math.sqrt(min(4.0, max(0.0, 2.0 - 2.0 * clip_similarity(similarity))))


def parse_where(where: Where) -> dict[str, str]:
    """``{"articleType": "Tshirts"}`` or ``["articleType=Tshirts", ...]`` -> dict; all must hold (AND).

    Raises:
        QueryError: an entry is not ``name=value`` or names one label twice with different values.
    """
    if where is None:
        return {}
    if isinstance(where, Mapping):
        return {str(k): str(v) for k, v in where.items()}
    if isinstance(where, str):
        where = [where]
    out: dict[str, str] = {}
    for term in where:
        name, sep, value = term.partition("=")
        if not sep or not name.strip():
            raise QueryError(f"bad filter {term!r}: write it as label=value, e.g. articleType=Tshirts")
        name, value = name.strip(), value.strip()
        if name in out and out[name] != value:
            raise QueryError(f"filter names {name!r} twice ({out[name]!r} and {value!r}); an item has one value")
        out[name] = value
    return out


def check_k(k: int) -> int:
    if not isinstance(k, int) or k < 1:
        raise QueryError(f"k must be a positive whole number, got {k!r}")
    return k


# -- combined queries: photos, words and items, each for or against -----------------------------------------

QUERY_KINDS = ("image", "text", "item")


@dataclass(frozen=True)
class QueryWeights:
    """How much each kind of query part counts; see ``combine`` for the rule.

    Defaults: every kind of positive part counts the same (1.0), and what to avoid counts half (0.5): enough to
    move results away from it without turning the query into "anything unlike that".
    """

    image: float = 1.0
    text: float = 1.0
    item: float = 1.0
    negative: float = 0.5

    @classmethod
    def parse(cls, terms: QueryWeights | Mapping[str, float] | Iterable[str] | None) -> QueryWeights:
        """``["text=2", "negative=0.3"]`` or ``{"text": 2}`` -> weights (unnamed kinds keep their defaults).

        Raises:
            QueryError: unknown kind, not a number, or a negative number.
        """
        if terms is None:
            return cls()
        if isinstance(terms, QueryWeights):
            return terms
        items = terms.items() if isinstance(terms, Mapping) else [t.partition("=")[::2] for t in terms]
        names = [f.name for f in fields(cls)]
        values: dict[str, float] = {}
        for name, value in items:
            name = str(name).strip()
            if name not in names:
                raise QueryError(f"unknown query weight {name!r}; use {', '.join(names)} (e.g. text=2)")
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise QueryError(f"query weight {name}={value!r} is not a number") from None
            if not math.isfinite(number) or number < 0:
                raise QueryError(f"query weight {name}={value!r} must be 0 or more")
            values[name] = number
        return cls(**values)


@dataclass(frozen=True)
class QueryPart:
    """One unit vector of a combined query: a photo, some words or a catalog item, for or against."""

    kind: str  # one of QUERY_KINDS
    vector: np.ndarray
    negative: bool = False
    label: str = ""  # what the user gave, for titles and messages


def combine(parts: Sequence[QueryPart], weights: QueryWeights | None = None) -> np.ndarray:
    """The query vector of a mix of photos, words and items: a weighted sum of unit vectors, renormalised.

    ``q = sum over kinds of w_kind * mean(positive parts of that kind) - w_negative * mean(negative parts)``,
    then ``q / |q|``. Averaging within a kind first means "more like these three items" is one item-sized
    pull, not three, so adding words to several items still moves the results.

    Raises:
        QueryError: no positive part, or the parts cancel out.
    """
    weights = weights or QueryWeights()
    positive = [p for p in parts if not p.negative]
    if not positive:
        raise QueryError("a query needs something to look for (a photo, words or an item); what to avoid alone "
                         "does not say what to find")
    dim = positive[0].vector.shape[-1]
    total = np.zeros(dim, dtype=np.float64)
    for kind in QUERY_KINDS:
        vectors = [_unit(p.vector) for p in positive if p.kind == kind]
        if vectors:
            total += getattr(weights, kind) * np.mean(vectors, axis=0)
    negative = [_unit(p.vector) for p in parts if p.negative]
    if negative:
        total -= weights.negative * np.mean(negative, axis=0)
    norm = float(np.linalg.norm(total))
    if not math.isfinite(norm) or norm < 1e-6:
        raise QueryError("the query's parts cancel out (or all their weights are 0); give fewer things to avoid "
                         "or lower --weight negative")
    return (total / norm).astype(np.float32)


def _unit(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v
