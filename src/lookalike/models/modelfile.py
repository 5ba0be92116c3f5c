"""``.lkm`` model files: one safetensors file holding the weights and, in its header, everything else.

The safetensors header's ``__metadata__`` (string to string) carries one key, ``lookalike``, a JSON document::

    {"format": "lookalike-model", "version": 1, "kind": "autoencoder" | "finetune" | "clip" | "text-tower",
     "arch": {...}, "preprocess": {"size", "mean", "std", "fill"}, "embedding": {"mode", "dim", "modes"},
     "classes": {column: [names]}, "training": {data, labels, epochs, metrics, ...}, "created": ISO time}

so the registry rebuilds the model from the file alone (no training arguments), and a file that is not one,
or comes from a newer format, is refused before any weight is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import ModelFileError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

FORMAT = "lookalike-model"
VERSION = 1
SUFFIX = ".lkm"
KINDS = ("autoencoder", "finetune", "clip", "text-tower")
MODE_SEPARATOR = "#"


def is_model_file(name: str) -> bool:
    """Does this model name point at a trained model file (``path.lkm`` or ``path.lkm#mode``)?"""
    return name.split(MODE_SEPARATOR, 1)[0].lower().endswith(SUFFIX)


def canonical_name(name: str) -> str:
    """The name a catalog records: a model file's absolute path (plus ``#mode``), so it reopens from anywhere;
    other names as they are."""
    if not is_model_file(name):
        return name
    path, sep, mode = name.partition(MODE_SEPARATOR)
    return str(Path(path).expanduser().resolve()) + (sep + mode if mode else "")


@dataclass
class ModelFile:
    """What a ``.lkm`` holds besides its tensors."""

    kind: str
    arch: dict[str, Any]
    preprocess: dict[str, Any]
    embedding: dict[str, Any]
    classes: dict[str, list[str]] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    version: int = VERSION

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "version": self.version, "kind": self.kind, "arch": self.arch,
                           "preprocess": self.preprocess, "embedding": self.embedding, "classes": self.classes,
                           "training": self.training, "created": self.created}, sort_keys=True, default=_plain)


def save_model(path: str | Path, state: dict[str, torch.Tensor], meta: ModelFile) -> Path:
    """Write weights and metadata atomically (a temporary file, then a rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"lookalike": meta.to_json()})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors creates 0600; a model file is shared like any other output
    tmp.replace(path)
    return path


def read_meta(path: str | Path) -> ModelFile:
    """The metadata of a ``.lkm`` without loading its weights.

    Raises:
        ModelFileError: missing, not a safetensors file, not a lookalike model, or a newer version.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} not found; train one with `lookalike train ... --out {path}`")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            metadata = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for bad headers
        raise ModelFileError(f"{path}: not a lookalike model file (unreadable safetensors header: "
                             f"{_short(exc)}); pass a .lkm written by `lookalike train`") from exc
    raw = metadata.get("lookalike")
    if raw is None:
        raise ModelFileError(f"{path}: a safetensors file but not a lookalike model (no lookalike metadata); "
                             "for plain backbone weights use --model timm:<arch> --weights FILE")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ModelFileError(f"{path}: corrupt lookalike metadata ({exc}); train the model again") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a lookalike model file (format {data.get('format')!r})")
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ModelFileError(f"{path}: model file version {version} is newer than this lookalike reads "
                             f"(up to {VERSION}); upgrade lookalike")
    if data.get("kind") not in KINDS:
        raise ModelFileError(f"{path}: unknown model kind {data.get('kind')!r}; this lookalike knows {KINDS}")
    try:
        return ModelFile(kind=data["kind"], arch=data["arch"], preprocess=data["preprocess"],
                         embedding=data["embedding"], classes=data.get("classes", {}),
                         training=data.get("training", {}), created=data.get("created", ""), version=version)
    except KeyError as exc:
        raise ModelFileError(f"{path}: lookalike metadata lacks {exc}; train the model again") from exc


def load_model_file(path: str | Path) -> tuple[ModelFile, dict[str, torch.Tensor]]:
    """Metadata and weights (on the CPU).

    Raises:
        ModelFileError: see ``read_meta``; also truncated weights.
    """
    from safetensors.torch import load_file

    meta = read_meta(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(f"{path}: weights cannot be read ({_short(exc)}); the file is damaged, train "
                             "the model again") from exc
    return meta, state


def file_digest(path: str | Path) -> str:
    """sha256 prefix of the file: what a catalog records as ``file:<digest>``."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Strictly load ``state``; a mismatch means the file does not fit its own architecture record."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: weights do not match the recorded architecture ({_short(exc)}); "
                             "the file is damaged or was edited") from exc


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and paths in training metadata."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
