"""A network model's preprocessing as data, and a model known only by its converted file and that data.

When a model is converted to OpenVINO (``engines.openvino_runtime.converted``), the PIL half of its own eval
transform and its normalisation are recorded beside the converted file (``source.json``): a shortest-side
resize with a centre crop (timm's ``resolve_data_config`` + ``create_transform``, open_clip's preprocess
config, run as ``transforms.ResizeCenterCrop``) or a letterbox (``.lkm`` models). A later process replays
that record with Pillow and NumPy alone (``ReplayedEmbedder``), so a search on a cached converted model
never imports PyTorch, torchvision or timm. The scaling and normalisation are inside the converted graph;
``Preprocess.normalize`` repeats them in NumPy (what the tests compare with timm's own transform).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .base import prepare_with
from .letterbox import Letterbox
from .transforms import ResizeCenterCrop

if TYPE_CHECKING:
    from ..core.config import EmbedderInfo

RESIZE_CENTER_CROP = "resize-center-crop"
LETTERBOX = "letterbox"
FORMAT = 1  # bump when a field changes meaning; records of another format are not replayed


@dataclass(frozen=True)
class Preprocess:
    """How a photo becomes a model input: the PIL step and the normalisation.

    ``steps``: ``resize-center-crop`` (the shortest side resized to ``size`` with Pillow filter ``resample``,
    then the centre ``crop`` of height x width) or ``letterbox`` (fit into a ``size`` square on ``fill``).
    ``mean``/``std``: per RGB channel, on pixels scaled to [0, 1]. ``draft_size``: the shortest side JPEG
    draft decoding may go down to. ``source``: where the figures came from (the model's own config).
    """

    steps: str
    size: int
    crop: tuple[int, int]
    resample: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    draft_size: int
    fill: int = 255
    source: str = ""
    format: int = FORMAT

    @classmethod
    def of(cls, embedder: Any) -> Preprocess | None:
        """The record of a network embedder's preprocessing, or None where its PIL step is not one this module
        replays (a torchvision ``Compose`` of other steps, or a crop larger than the resize, which pads)."""
        transform = getattr(embedder, "pil_transform", None)
        config = getattr(embedder, "data_config", None) or {}
        if "mean" not in config or "std" not in config:
            return None
        mean, std = (tuple(float(v) for v in config[key]) for key in ("mean", "std"))
        if len(mean) != 3 or len(std) != 3:
            return None
        source = type(embedder).__name__ + " data_config"
        if isinstance(transform, ResizeCenterCrop):
            ch, cw = transform.crop
            if ch > transform.size or cw > transform.size:  # torchvision would pad: not replayed here
                return None
            return cls(RESIZE_CENTER_CROP, int(transform.size), (int(ch), int(cw)), int(transform.resample), mean,
                       std, int(embedder.draft_size), source=source)
        if isinstance(transform, Letterbox):
            return cls(LETTERBOX, transform.size, (transform.size, transform.size), int(Image.Resampling.BICUBIC),
                       mean, std, int(embedder.draft_size), fill=transform.fill, source=source)
        return None

    @classmethod
    def from_dict(cls, record: dict) -> Preprocess | None:
        """A record written by ``to_dict``; None when it is of another format or damaged."""
        try:
            if int(record.get("format", 0)) != FORMAT or record["steps"] not in (RESIZE_CENTER_CROP, LETTERBOX):
                return None
            return cls(steps=str(record["steps"]), size=int(record["size"]),
                       crop=(int(record["crop"][0]), int(record["crop"][1])), resample=int(record["resample"]),
                       mean=tuple(float(v) for v in record["mean"]), std=tuple(float(v) for v in record["std"]),
                       draft_size=int(record["draft_size"]), fill=int(record.get("fill", 255)),
                       source=str(record.get("source", "")))
        except (KeyError, TypeError, ValueError, IndexError):
            return None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["crop"] = list(self.crop)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    def pil_transform(self) -> ResizeCenterCrop | Letterbox:
        """The PIL step, picklable for decoding workers: RGB picture in, ``crop`` (H x W) picture out."""
        if self.steps == LETTERBOX:
            return Letterbox(self.size, self.fill)
        return ResizeCenterCrop(self.size, self.crop, self.resample)

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8 N x H x W x 3 -> float32 N x 3 x H x W, ``(x / 255 - mean) / std``: what timm's ``ToTensor`` +
        ``Normalize`` compute (and what the converted graph does first)."""
        x = np.asarray(batch, dtype=np.float32).transpose(0, 3, 1, 2) / np.float32(255)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, 3, 1, 1)
        return (x - mean) / std


class ReplayedEmbedder:
    """A network model known by its converted OpenVINO file and its recorded preprocessing: what ``Encoder``
    runs on OpenVINO without PyTorch. It has no ``model``; only the OpenVINO runtime can run it.

    ``info`` is the catalog's (the converted file was keyed by it); ``converted_xml`` the fp32 model file.
    """

    needs_torch = True  # a network: never the NumPy runtime
    has_text = False

    def __init__(self, info: EmbedderInfo, preprocess: Preprocess, converted_xml: Path):
        self.info = info
        self.preprocess = preprocess
        self.converted_xml = converted_xml
        self.pil_transform = preprocess.pil_transform()
        self.draft_size = preprocess.draft_size
        self.data_config = {"mean": preprocess.mean, "std": preprocess.std, "input_size": (3, *preprocess.crop)}

    @property
    def dim(self) -> int:
        return self.info.dim

    def prepare(self, img: Image.Image) -> np.ndarray:
        """Resize and crop (or letterbox) an RGB picture: uint8 H x W x 3."""
        return prepare_with(self.pil_transform, img)
