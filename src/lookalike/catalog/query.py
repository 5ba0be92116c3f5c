"""What a search returns, and the small rules shared by every way of asking (CLI, API, web)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from ..core.errors import QueryError

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

    def __post_init__(self) -> None:
        # Float rounding can put the cosine of unit vectors a hair outside [-1, 1]; never show 1.0000013.
        object.__setattr__(self, "similarity", clip_similarity(self.similarity))
        object.__setattr__(self, "distance", min(2.0, max(0.0, float(self.distance))))

    def to_dict(self) -> dict:
        return asdict(self)


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
