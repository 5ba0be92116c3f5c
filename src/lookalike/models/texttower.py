"""Text towers trained against a locked image model (LiT): words into the space of a catalog's own vectors.

LiT (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning") keeps an image model frozen
and trains only a text tower to map words next to the image vectors of what they describe. Here the locked
image model is any image model of the registry (``mobilenetv2``, ``timm:...``, ``resnet50``), so its outputs
are exactly the vectors a catalog built with it already stores: adding a text tower to such a catalog gives it
search by words without embedding a photo again.

The tower is a bag of n-grams: a text's words, word pairs and character 3/4-grams of each word (``<word>``)
that occur in the training texts (the vocabulary, stored in the file) are looked up in a learned table,
averaged, passed through an optional GELU layer and projected to the image vectors' dimension, then L2
normalised. It runs in NumPy (no PyTorch at search time); ``train/lit.py`` trains the same arithmetic in
PyTorch. The ``.lkm`` (kind ``text-tower``) records the image model's ``EmbedderInfo`` (name, weights id, dim)
it was trained against, so a catalog of another model or other weights refuses it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import EmbedderInfo
from ..core.errors import ModelFileError
from .modelfile import ModelFile, file_digest, read_meta

KIND = "text-tower"
TOKENIZER = "ngrams"
UNKNOWN = 0  # row 0 of the table: texts with no known n-gram embed to the projection's bias alone
_WORD = re.compile(r"[0-9a-z]+")


@dataclass(frozen=True)
class NgramTokenizer:
    """Text -> n-gram features: lower-cased words (``w:``), adjacent word pairs (``b:``) and character
    n-grams of each ``<word>`` (``c:``)."""

    char_ngrams: tuple[int, ...] = (3, 4)
    word_pairs: bool = True

    def features(self, text: str) -> list[str]:
        """The n-gram features of one text, in order, repeats kept (a repeated word weighs more)."""
        words = _WORD.findall(str(text).lower())
        out = [f"w:{w}" for w in words]
        if self.word_pairs:
            out += [f"b:{a}_{b}" for a, b in zip(words, words[1:], strict=False)]
        for w in words:
            padded = f"<{w}>"
            for n in self.char_ngrams:
                out += [f"c:{padded[i:i + n]}" for i in range(len(padded) - n + 1)]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": TOKENIZER, "char_ngrams": list(self.char_ngrams), "word_pairs": self.word_pairs}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NgramTokenizer:
        """Raises: ModelFileError for a tokenizer this lookalike does not know."""
        if data.get("kind") != TOKENIZER:
            raise ModelFileError(f"unknown text tokenizer {data.get('kind')!r}; this lookalike knows {TOKENIZER!r}")
        return cls(char_ngrams=tuple(int(n) for n in data.get("char_ngrams", (3, 4))),
                   word_pairs=bool(data.get("word_pairs", True)))


@dataclass
class Vocabulary:
    """n-gram feature -> row of the embedding table (row 0: unknown, never looked up)."""

    tokenizer: NgramTokenizer
    terms: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.row = {t: i + 1 for i, t in enumerate(self.terms)}

    @classmethod
    def build(cls, texts: Sequence[str], tokenizer: NgramTokenizer, min_count: int = 1,
              max_terms: int = 50_000) -> Vocabulary:
        """The features seen at least ``min_count`` times in ``texts`` (most frequent first, at most
        ``max_terms``; ties in first-seen order, so the same texts give the same vocabulary)."""
        counts: dict[str, int] = {}
        for text in texts:
            for f in tokenizer.features(text):
                counts[f] = counts.get(f, 0) + 1
        kept = [t for t, c in counts.items() if c >= min_count]
        kept.sort(key=lambda t: -counts[t])  # stable: first-seen order among equal counts
        return cls(tokenizer, kept[:max_terms])

    def __len__(self) -> int:
        return len(self.terms) + 1

    def ids(self, text: str) -> list[int]:
        """Rows of a text's known features (unknown ones dropped; ``[UNKNOWN]`` when none is known)."""
        rows = [self.row[f] for f in self.tokenizer.features(text) if f in self.row]
        return rows or [UNKNOWN]

    def bags(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 T, offsets int64 N): every text's rows concatenated, and where each text starts (the
        EmbeddingBag layout)."""
        rows = [self.ids(t) for t in texts]
        offsets = np.cumsum([0] + [len(r) for r in rows[:-1]]).astype(np.int64)
        flat = np.fromiter((i for r in rows for i in r), dtype=np.int64, count=sum(len(r) for r in rows))
        return flat, offsets


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh form (what ``torch.nn.GELU(approximate="tanh")`` computes)."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


class TextTower:
    """A trained text tower in NumPy: ``encode(texts)`` -> N x D float32 unit vectors in the space of the image
    model ``image`` (the ``EmbedderInfo`` of the catalogs it fits)."""

    def __init__(self, meta: ModelFile, weights: dict[str, np.ndarray], digest: str = "", path: Path | None = None):
        arch = meta.arch
        try:
            self.image = EmbedderInfo(**arch["image_model"])
            self.vocabulary = Vocabulary(NgramTokenizer.from_dict(arch["tokenizer"]), list(arch["vocabulary"]))
            self.table = weights["embedding.weight"].astype(np.float32)
            self.hidden = (weights["hidden.weight"].astype(np.float32), weights["hidden.bias"].astype(np.float32)) \
                if "hidden.weight" in weights else None
            self.proj = (weights["proj.weight"].astype(np.float32), weights["proj.bias"].astype(np.float32))
            self.logit_scale = float(np.exp(float(np.asarray(weights["logit_scale"]).reshape(-1)[0])))
        except (KeyError, TypeError) as exc:
            raise ModelFileError(f"{path or 'text tower'}: incomplete text tower ({exc}); train it again") from exc
        if len(self.table) != len(self.vocabulary) or self.proj[0].shape[0] != self.image.dim:
            raise ModelFileError(f"{path or 'text tower'}: weights do not match the recorded vocabulary or dimension; "
                                 "the file is damaged, train it again")
        self.meta, self.digest, self.path = meta, digest, path

    @property
    def dim(self) -> int:
        return self.image.dim

    def describe(self) -> str:
        """e.g. ``text tower for mobilenetv2 (weights ..., 1280-d), 4,312 n-grams``."""
        return (f"text tower for {self.image.name} (weights {self.image.weights}, {self.image.dim}-d), "
                f"{len(self.vocabulary) - 1:,} n-grams")

    def encode(self, texts: str | Sequence[str]) -> np.ndarray:
        """One text -> a D vector; a list -> an N x D matrix; float32, unit length (LiT's text tower)."""
        single = isinstance(texts, str)
        items = [texts] if single else [str(t) for t in texts]
        flat, offsets = self.vocabulary.bags(items)
        sums = np.add.reduceat(self.table[flat], offsets, axis=0) if len(items) else np.zeros((0, self.table.shape[1]))
        counts = np.diff(np.append(offsets, len(flat))).astype(np.float32)[:, None]
        x = (sums / np.maximum(counts, 1)).astype(np.float32)
        if self.hidden is not None:
            x = gelu(x @ self.hidden[0].T + self.hidden[1]).astype(np.float32)
        x = x @ self.proj[0].T + self.proj[1]
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        out = x.astype(np.float32)
        return out[0] if single else out

    def check_fits(self, catalog_name: str, info: EmbedderInfo) -> None:
        """Refuse a catalog whose vectors come from another image model, other weights or another dimension.

        Raises:
            ModelFileError: in one line naming both models.
        """
        mine = (self.image.name, self.image.weights, self.image.dim)
        if mine != (info.name, info.weights, info.dim):
            raise ModelFileError(
                f"{self.path or 'the text tower'} was trained against {self.image.name} (weights {self.image.weights}, "
                f"{self.image.dim}-d) but {catalog_name} holds {info.name} vectors (weights {info.weights}, "
                f"{info.dim}-d); train a tower against this catalog's model: lookalike train clip SOURCE "
                f"--image-model {info.name} --lock-image --out tower.lkm")


def load_text_tower(path: str | Path) -> TextTower:
    """Read a ``kind: text-tower`` ``.lkm`` (NumPy only: no PyTorch is imported).

    Raises:
        ModelFileError: missing, corrupt, not a lookalike model, or a model of another kind.
    """
    from safetensors.numpy import load_file

    path = Path(path).expanduser()
    meta = read_meta(path)
    if meta.kind != KIND:
        raise ModelFileError(f"{path} is a {meta.kind} model, not a text tower; train one with `lookalike train clip "
                             "SOURCE --image-model NAME --lock-image --out tower.lkm`")
    try:
        weights = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ModelFileError(f"{path}: weights cannot be read ({exc}); the file is damaged, train it again") from exc
    return TextTower(meta, weights, file_digest(path), path)
