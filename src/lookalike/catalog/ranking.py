"""Ranking a merchandiser can steer: rules (boost, bury, pin, exclude), diversity (MMR) and rank fusion.

A search first fetches more candidates than it shows (``candidates``), then ``rerank`` orders them:

1. ``exclude LABEL=VALUE``: such products are never candidates (the search leaves them out, so k still fill);
2. ``boost LABEL=VALUE[:W]``: W (default 0.1) is added to the cosine similarity of a matching product
   (boosts add up) and the candidates are ordered by that score;
3. ``diversity LAMBDA``: maximal marginal relevance (Carbonell and Goldstein 1998, "The use of MMR,
   diversity-based reranking for reordering documents and producing summaries", SIGIR) picks, one at a time,
   the candidate maximising ``LAMBDA * score - (1 - LAMBDA) * max cosine to those already picked``;
   1 = scores alone, 0 = as different from each other as possible;
4. ``bury LABEL=VALUE``: matching products go below every other result (in their own order);
5. ``pin ID``: the product comes first (pins in the order given), whether or not the search found it.

A label rule matches a product with that value among its values (multi-valued labels join with " | ").
Every result lists the rules that moved it (``Match.rules``). Keyword and vector lists are fused by
reciprocal rank fusion (``rrf``; Cormack, Clarke and Buettcher 2009, SIGIR).

A catalog keeps default rules (``lookalike rules set FILE.toml``), in the TOML form of ``Ranking.from_toml``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import QueryError
from .query import Match, amended

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_BOOST = 0.1
RRF_K = 60  # the constant of Cormack et al. 2009: score = sum of weight / (60 + rank)
META_KEY = "ranking_rules"  # where a catalog keeps its default rules (store meta, JSON)
LABELS_SEPARATOR = " | "


def candidates(k: int) -> int:
    """How many results a search fetches before rules and diversity pick k: 4 k, at least k + 40, so a boost
    can lift an item from well below the k-th place and MMR has near-duplicates to skip."""
    return max(4 * k, k + 40)


@dataclass(frozen=True)
class LabelRule:
    """``label=value`` with a weight (boosts only)."""

    label: str
    value: str
    weight: float = 0.0

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Does a product with these labels (multi-valued ones joined " | ") carry this value?"""
        have = labels.get(self.label)
        if have is None:
            return False
        return have == self.value or (LABELS_SEPARATOR in have and self.value in have.split(LABELS_SEPARATOR))

    def text(self, with_weight: bool = False) -> str:
        return f"{self.label}={self.value}" + (f":{_num(self.weight)}" if with_weight else "")


@dataclass(frozen=True)
class Ranking:
    """Rules and diversity for one search; an empty one changes nothing. Build with ``parse`` (command-line
    strings) or ``from_toml``; ``merged`` puts a request's rules on top of a catalog's defaults."""

    boost: tuple[LabelRule, ...] = ()
    bury: tuple[LabelRule, ...] = ()
    exclude: tuple[LabelRule, ...] = ()
    pin: tuple[str, ...] = ()
    diversity: float | None = None
    keyword_weight: float | None = None  # None: the default (1.0) where keywords take part

    @property
    def active(self) -> bool:
        """Does it change a result list (keyword weight aside)?"""
        return bool(self.boost or self.bury or self.exclude or self.pin) or self.diversity is not None

    def describe(self) -> str:
        """The rules in a line, as typed: ``boost brand=Acme:0.2, bury stock=out, pin 42, diversity 0.7``."""
        parts = [f"boost {r.text(with_weight=True)}" for r in self.boost]
        parts += [f"bury {r.text()}" for r in self.bury] + [f"exclude {r.text()}" for r in self.exclude]
        parts += [f"pin {p}" for p in self.pin]
        if self.diversity is not None:
            parts.append(f"diversity {_num(self.diversity)}")
        return ", ".join(parts) or "no rules"

    @classmethod
    def parse(cls, boost: Iterable[str] | None = None, bury: Iterable[str] | None = None,
              exclude: Iterable[str] | None = None, pin: Iterable[str] | None = None,
              diversity: float | None = None, keyword_weight: float | None = None) -> Ranking:
        """From strings as typed: boosts ``brand=Acme`` or ``brand=Acme:0.3``, buries and excludes
        ``label=value``, pins product ids; ``diversity`` in [0, 1]; ``keyword_weight`` 0 or more.

        Raises:
            QueryError: a rule not written ``label=value``, a weight or number out of range.
        """
        if diversity is not None:
            diversity = float(diversity)
            if not (0.0 <= diversity <= 1.0):
                raise QueryError(f"diversity {diversity!r} must be between 0 (most varied) and 1 (similarity only)")
        if keyword_weight is not None:
            keyword_weight = float(keyword_weight)
            if not (math.isfinite(keyword_weight) and keyword_weight >= 0):
                raise QueryError(f"keyword weight {keyword_weight!r} must be 0 (vectors only) or more")
        return cls(boost=tuple(_rule(t, "boost") for t in _strings(boost)),
                   bury=tuple(_rule(t, "bury") for t in _strings(bury)),
                   exclude=tuple(_rule(t, "exclude") for t in _strings(exclude)),
                   pin=tuple(str(p).strip() for p in _strings(pin) if str(p).strip()),
                   diversity=diversity, keyword_weight=keyword_weight)

    @classmethod
    def from_mapping(cls, data: Mapping, source: str = "rules") -> Ranking:
        """From a mapping such as a TOML file gives: lists of strings ``boost``, ``bury``, ``exclude``, ``pin``,
        numbers ``diversity`` and ``keyword_weight``.

        Raises:
            QueryError: an unknown key or a bad value (the message names ``source``).
        """
        known = {"boost", "bury", "exclude", "pin", "diversity", "keyword_weight"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise QueryError(f"{source}: unknown key {unknown[0]!r}; use {', '.join(sorted(known))}")
        for name in ("boost", "bury", "exclude", "pin"):
            value = data.get(name, [])
            if isinstance(value, str) or not all(isinstance(v, (str, int)) for v in value):
                raise QueryError(f"{source}: {name} must be a list of strings, e.g. {name} = [\"brand=Acme\"]")
        try:
            return cls.parse(data.get("boost"), data.get("bury"), data.get("exclude"),
                             [str(p) for p in data.get("pin", [])], data.get("diversity"), data.get("keyword_weight"))
        except (QueryError, TypeError, ValueError) as exc:
            raise QueryError(f"{source}: {exc}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> Ranking:
        """Read a rules file (TOML, read with ``tomllib``), e.g.::

            boost = ["brand=Acme:0.2", "season=Summer"]
            bury = ["stock=out"]
            exclude = ["usage=Sample"]
            pin = ["15970"]
            diversity = 0.8

        Raises:
            QueryError: the file cannot be read, is not TOML, or holds a bad rule (the message names the file).
        """
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise QueryError(f"{path}: cannot read the rules file ({exc.strerror or exc})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise QueryError(f"{path}: not a TOML rules file ({exc}); see docs/guides/ranking.md") from None
        return cls.from_mapping(data, str(path))

    def to_dict(self) -> dict:
        """The TOML/JSON form (what ``from_mapping`` reads), empty parts left out."""
        out: dict = {}
        if self.boost:
            out["boost"] = [r.text(with_weight=True) for r in self.boost]
        for name in ("bury", "exclude"):
            if getattr(self, name):
                out[name] = [r.text() for r in getattr(self, name)]
        if self.pin:
            out["pin"] = list(self.pin)
        if self.diversity is not None:
            out["diversity"] = self.diversity
        if self.keyword_weight is not None:
            out["keyword_weight"] = self.keyword_weight
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Ranking:
        return cls.from_mapping(json.loads(text), "the catalog's rules") if text else cls()

    def merged(self, request: Ranking | None) -> Ranking:
        """A catalog's defaults (self) with a request's rules added; the request's diversity, keyword weight
        and pins win."""
        if request is None:
            return self
        return Ranking(boost=self.boost + request.boost, bury=self.bury + request.bury,
                       exclude=self.exclude + request.exclude,
                       pin=request.pin or self.pin,
                       diversity=request.diversity if request.diversity is not None else self.diversity,
                       keyword_weight=(request.keyword_weight if request.keyword_weight is not None
                                       else self.keyword_weight))


def _strings(values) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        return [values]
    return [str(v) for v in values]


def _num(x: float) -> str:
    return f"{x:g}"


def _rule(text: str, kind: str) -> LabelRule:
    name, sep, value = str(text).partition("=")
    if not sep or not name.strip() or not value.strip():
        raise QueryError(f"bad {kind} rule {text!r}: write it as label=value, e.g. brand=Acme"
                         + (" or brand=Acme:0.2" if kind == "boost" else ""))
    weight = 0.0
    value = value.strip()
    if kind == "boost":
        weight = DEFAULT_BOOST
        head, colon, tail = value.rpartition(":")
        if colon and head:
            try:
                weight = float(tail)
            except ValueError:
                weight = None  # a value with a colon in it: keep it whole, default weight
            if weight is None:
                weight = DEFAULT_BOOST
            elif not math.isfinite(weight):
                raise QueryError(f"boost {text!r}: the weight must be a finite number")
            else:
                value = head.strip()
    return LabelRule(name.strip(), value, weight)


# -- re-ranking -----------------------------------------------------------------------------------------------

def rerank(matches: Sequence[Match], k: int, ranking: Ranking,
           vectors: Callable[[Sequence[Match]], np.ndarray] | None = None,
           pinned: Callable[[Sequence[str]], Mapping[str, Match]] | None = None,
           relevance: Sequence[float] | None = None) -> list[Match]:
    """The k results of ``ranking`` among candidate ``matches`` (best first), each listing the rules that
    moved it in ``Match.rules``, ranks renumbered from 1. ``vectors``: unit vectors (N x D float32) of the
    matches, for diversity; ``pinned``: Match rows for pinned ids that are not among the candidates (the
    catalog computes their similarity to the query), by pinned id; ``relevance``: one score per match to rank
    by instead of its similarity (a fused list's scaled RRF scores). Products matching an ``exclude`` rule are
    dropped here too (the search should already leave them out so that k fill)."""
    pins = list(dict.fromkeys(ranking.pin))
    pin_set = set(pins)
    found: dict[str, Match] = {}
    keep: list[int] = []
    exclude, boost, bury = ranking.exclude, ranking.boost, ranking.bury
    for i, m in enumerate(matches):  # a pin names a product: by photo, the product's best photo
        pin = m.id if m.id in pin_set else m.product if m.product in pin_set else None
        if pin is not None:
            if pin not in found:
                found[pin] = m
            continue
        if exclude and any(r.matches(m.labels) for r in exclude):
            continue
        keep.append(i)
    rows = [matches[i] for i in keep]
    moved: dict[int, list[str]] = {i: [] for i in range(len(rows))}
    scores = np.array([m.similarity for m in rows] if relevance is None else [relevance[i] for i in keep],
                      dtype=np.float64)
    buried = np.zeros(len(rows), dtype=bool)
    for i, m in enumerate(rows):
        labels = m.labels
        for rule in boost:
            if rule.matches(labels):
                scores[i] += rule.weight
                moved[i].append(boost_text(rule))
        for rule in bury:
            if rule.matches(labels):
                buried[i] = True
                moved[i].append(bury_text(rule))
                break
    need = max(0, k - len(pins))
    vecs = None if vectors is None else (lambda idx: vectors([rows[i] for i in idx]))
    order, diversified = order_candidates(scores, buried, need, ranking.diversity, vecs)
    for i, div in zip(order.tolist(), diversified.tolist(), strict=True):
        if div:
            moved[i].append(diversity_text(ranking.diversity))
    missing = [p for p in pins if p not in found]
    if missing and pinned is not None:
        found.update(pinned(missing))
    chosen = [(found[p], ["pin"]) for p in pins if p in found]
    chosen += [(rows[i], moved[i]) for i in order.tolist()]
    return [amended(m, rules=rules, rank=rank) for rank, (m, rules) in enumerate(chosen[:k], start=1)]


def boost_text(rule: LabelRule) -> str:
    """How a result names a boost that applied to it (``Match.rules``), e.g. ``boost brand=Acme +0.2``."""
    return f"boost {rule.text()} {rule.weight:+g}"


def bury_text(rule: LabelRule) -> str:
    """How a result names the (first) bury rule that applied to it, e.g. ``bury stock=out``."""
    return f"bury {rule.text()}"


def diversity_text(diversity: float) -> str:
    """How a result moved by MMR says so, e.g. ``diversity 0.7``."""
    return f"diversity {diversity:g}"


def order_candidates(scores: np.ndarray, buried: np.ndarray, need: int, diversity: float | None = None,
                     vectors: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The order of one query's candidates under boosts, buries and diversity, as ``rerank`` (and
    ``analysis.recommend``) apply them: up to ``need`` indices into the N candidates, best first, unburied ones
    first, each group by ``scores`` (similarity plus boosts, N floats; ties keep the candidates' order) or, with
    ``diversity``, by ``mmr`` over ``vectors(indices)`` (unit vectors, len(indices) x D float32); and for each
    index returned whether diversity moved it from its place in score order (N bool -> need bool)."""
    order: list[np.ndarray] = []
    moved: list[np.ndarray] = []
    taken = 0
    for group in (np.flatnonzero(~buried), np.flatnonzero(buried)):
        if taken >= need or len(group) == 0:
            continue
        by_score = group[np.argsort(-scores[group], kind="stable")]
        if diversity is not None and vectors is not None and len(by_score) > 1:
            vecs = np.asarray(vectors(by_score), dtype=np.float32)
            picked = by_score[mmr(scores[by_score], vecs, min(need - taken, len(by_score)), diversity)]
            div = picked != by_score[:len(picked)]
        else:
            picked = by_score[:need - taken]
            div = np.zeros(len(picked), dtype=bool)
        order.append(picked[:need - taken])
        moved.append(div[:need - taken])
        taken += len(order[-1])
    if not order:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    return np.concatenate(order).astype(np.int64), np.concatenate(moved)


def mmr(relevance: np.ndarray, vectors: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Maximal marginal relevance (Carbonell and Goldstein 1998): indices of ``k`` of the N candidates, in the
    order picked, each maximising ``lam * relevance[i] - (1 - lam) * max_j cos(v_i, v_j)`` over those already
    picked. ``relevance``: N floats; ``vectors``: N x D unit vectors (float32); ``lam`` in [0, 1]. O(N k D)."""
    n = len(relevance)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    rel = np.asarray(relevance, dtype=np.float64)
    # einsum, not BLAS: after a FAISS search, a BLAS call waits on OpenMP threads (35 ms against 0.2 ms here);
    # only the k rows of the picked candidates are needed, each computed when picked: O(N k D), not O(N^2 D)
    v = np.asarray(vectors, dtype=np.float32)
    most = np.full(n, -np.inf)
    taken = np.zeros(n, dtype=bool)
    picked = []
    for step in range(k):
        penalty = np.where(np.isinf(most), 0.0, most) if step else np.zeros(n)
        value = lam * rel - (1.0 - lam) * penalty
        value[taken] = -np.inf
        best = int(np.argmax(value))
        picked.append(best)
        taken[best] = True
        if step + 1 < k:
            most = np.maximum(most, np.einsum("jd,d->j", v, v[best]))
    return np.asarray(picked, dtype=np.int64)


def rrf(rankings: Sequence[Sequence[str]], weights: Sequence[float] | None = None, k: int = RRF_K
        ) -> list[tuple[str, float]]:
    """Reciprocal rank fusion (Cormack, Clarke and Buettcher 2009): ids of several ranked lists (best first)
    scored ``sum over lists of weight / (k + rank)`` (rank from 1), best first, ties kept in first-seen order.
    A weight of 0 leaves a list out."""
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    scores: dict[str, float] = {}
    for ranked, weight in zip(rankings, weights, strict=True):
        if not weight:
            continue
        for rank, item in enumerate(ranked, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    order = {item: i for i, item in enumerate(scores)}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))
