"""Small frozen settings objects, saved as JSON beside the catalog so a catalog reopens as it was built."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Pillow refuses > 2x its own default; we refuse earlier and with our own message. 100 MP covers
# every real product photo (a 2700x2700 original is 7.3 MP) while stopping decompression bombs.
DEFAULT_MAX_PIXELS = 100_000_000
# A product photo is a few MB; a file far larger is a mistake (a video, a disk image) and is not read.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class EmbedderInfo:
    """What produced a catalog's vectors; two catalogs' vectors are comparable only if these match."""

    name: str  # registry name, e.g. "resnet50" or "timm:convnext_tiny"
    timm_name: str  # the timm architecture + tag actually created
    weights: str  # "hf-hub:<repo>", "file:<sha256 prefix>" or "random:<seed>"
    dim: int
    pool: str
    text: bool = False  # the model also embeds words into the same space (a text tower: CLIP, SigLIP)

    def describe(self) -> str:
        towers = ", text+image" if self.text else ""
        return f"{self.name} ({self.timm_name}, weights {self.weights}, {self.dim}-d, {self.pool} pooling{towers})"


@dataclass(frozen=True)
class CatalogConfig:
    """Written once when a catalog is created; identifies its embedder and format."""

    embedder: EmbedderInfo
    format: int = 1
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> CatalogConfig:
        return cls.from_json(path.read_text())

    @classmethod
    def from_json(cls, text: str) -> CatalogConfig:
        """Raises: ValueError, KeyError, TypeError for text that is not a catalog config."""
        data = json.loads(text)
        return cls(
            embedder=EmbedderInfo(**data["embedder"]),
            format=int(data.get("format", 1)),
            created=data.get("created", ""),
            extra=data.get("extra", {}),
        )


@dataclass(frozen=True)
class EncodeOptions:
    """How to run the embedder: where, in what precision, how many images at once, how many decoders."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (GPUs) | int8 (OpenVINO, calibrated on a catalog's photos)
    runtime: str = "auto"  # auto | torch | openvino: what runs a network model (auto: OpenVINO on x86 CPUs)
    batch_size: int | None = None  # None: chosen from the device
    workers: int | None = None  # decoding processes; None: from the CPU count, 0: decode inline
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    draft: bool = True  # JPEG DCT downscaling before the resize
    progress: bool = True
