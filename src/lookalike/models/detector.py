"""Open-vocabulary object detection for "shop the look": which items are in a shopper's photo, and where.

The detector is a Hugging Face ``transformers`` zero-shot object detector (OWLv2, Minderer et al. 2023, "Scaling
Open-Vocabulary Object Detection", arXiv 2306.09683; or OWL-ViT, arXiv 2205.06230): it scores every one of its
patch boxes against each query word in one forward pass. The boxes come out of transformers' own
``post_process_grounded_object_detection`` (scaled to the photo; OWLv2 pads the photo to a square first and
scales back by its longer side), then torchvision's ``nms`` keeps, of boxes that overlap by more than
``nms_iou``, the best scoring one, whatever its word (one shirt found as both "Shirts" and "Tshirts" is one
item).

Weights load like every other network model: a local folder written by ``save_pretrained``, or a hub repo from
the cache (``HF_HOME``, ``HF_HUB_OFFLINE``), downloaded into it only when the hub is reachable. ``locate`` checks
that before PyTorch or transformers are imported, and fails in one line naming the model and the fix.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..core.errors import ModelUnavailableError, QueryError
from ..core.regions import MIN_REGION_SIDE, Box
from .hub import cached_file, hub_offline, probe_hub

DEFAULT_DETECTOR = "google/owlv2-base-patch16-ensemble"
DETECTOR_ENV = "LOOKALIKE_DETECTOR"  # another detector for every command and the server
CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The files a detector needs besides its weights: the model's and the processor's configs, the tokenizer's.
SIDE_FILES = ("*.json", "*.txt")
DEFAULT_THRESHOLD = 0.1  # transformers' own default for OWL post-processing
DEFAULT_NMS_IOU = 0.3  # the IoU transformers' OWL image-guided post-processing suppresses at
DEFAULT_MAX_BOXES = 8
MAX_WORDS = 200  # words one detection is asked with: a catalog's category values, cut to the commonest


@dataclass(frozen=True)
class Detection:
    """One item found in a photo: the query word it matched best, its score (a sigmoid probability in [0, 1])
    and its box in pixels of the upright photo."""

    label: str
    score: float
    box: Box

    def to_dict(self) -> dict:
        return {"label": self.label, "score": round(self.score, 4), "box": self.box.as_list()}


def detector_name(name: str | None = None) -> str:
    """The detector to use: ``name``, else ``LOOKALIKE_DETECTOR``, else ``DEFAULT_DETECTOR``."""
    return (name or os.environ.get(DETECTOR_ENV) or DEFAULT_DETECTOR).strip()


def _fix(name: str) -> str:
    home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return (f"Fixes: run once with internet access (or `hf download {name}`) so it is cached under "
            f"HF_HOME={home}; or copy that cache here; or pick another with --detector NAME (a hub repo or a "
            f"folder written by save_pretrained; environment: {DETECTOR_ENV}); or search a region with --box")


def locate(name: str | None = None, network: bool = True) -> Path | str:
    """Where the detector's files are, checked before PyTorch is imported: a local folder, a hub repo's cached
    snapshot folder, or (online, not cached) the repo id, which ``load_detector`` downloads. ``network=False``:
    a repo not cached is refused without a look at the hub.

    Raises:
        ModelUnavailableError: a folder without config.json or weights; a repo not cached while offline
            (``HF_HUB_OFFLINE``) or with the hub unreachable. One line naming the model and the fix.
    """
    name = detector_name(name)
    folder = Path(name).expanduser()
    if folder.is_dir() or name.startswith((".", "/", "~")):
        if not (folder / CONFIG_FILE).is_file():
            raise ModelUnavailableError(f"cannot load the detector {name}: no {CONFIG_FILE} in that folder; give "
                                        "a folder written by transformers' save_pretrained, or a hub repo name")
        if not any((folder / f).is_file() for f in WEIGHT_FILES):
            raise ModelUnavailableError(f"cannot load the detector {name}: the folder holds no weights "
                                        f"({' or '.join(WEIGHT_FILES)})")
        return folder.resolve()
    if name.count("/") != 1:
        raise ModelUnavailableError(f"cannot load the detector {name!r}: give a hub repo (ORG/NAME, e.g. "
                                    f"{DEFAULT_DETECTOR}) or a model folder")
    config, weights = cached_file(name, (CONFIG_FILE,)), cached_file(name, WEIGHT_FILES)
    if config is not None and weights is not None and Path(config).parent == Path(weights).parent:
        return Path(config).parent
    if hub_offline() or not network:
        raise ModelUnavailableError(f"cannot load the detector {name}: HF_HUB_OFFLINE is set and its weights are "
                                    f"not in the hub cache. {_fix(name)}")
    try:
        probe_hub(name, "detector")
    except ModelUnavailableError:
        raise ModelUnavailableError(f"cannot load the detector {name}: the hub is unreachable and its weights are "
                                    f"not in the cache. {_fix(name)}") from None
    return name


def detector_ready(name: str | None = None) -> bool:
    """Whether the detector's files are on this machine (a folder, or the hub cache); never asks the network."""
    try:
        locate(name, network=False)
    except ModelUnavailableError:
        return False
    return True


class Detector:
    """A zero-shot object detector loaded once (processor + model, in eval mode), run under a lock (one
    forward pass at a time per detector)."""

    def __init__(self, name: str | None = None, device: str = "auto"):
        """Raises: ModelUnavailableError (see ``locate``; also files that transformers cannot load)."""
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.name = detector_name(name)
        source = locate(self.name)
        if isinstance(source, str):  # online and not cached: into the hub cache first
            from huggingface_hub import snapshot_download

            try:
                source = Path(snapshot_download(source, allow_patterns=[*SIDE_FILES, *WEIGHT_FILES]))
            except Exception as exc:  # noqa: BLE001 - network, authentication, no such repo: one line
                raise ModelUnavailableError(f"cannot load the detector {self.name}: {_first_line(exc)}. "
                                            f"{_fix(self.name)}") from exc
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per load of a model that loads in a second: noise on the terminal
        try:
            self.processor = AutoProcessor.from_pretrained(str(source))
            self.model = AutoModelForZeroShotObjectDetection.from_pretrained(str(source)).eval()
        except Exception as exc:  # noqa: BLE001 - not a detector, broken files: one line
            raise ModelUnavailableError(f"cannot load the detector {self.name} from {source}: {_first_line(exc)}"
                                        ) from exc
        self.device = _device(device)
        self.model.to(self.device)
        self._torch = torch
        self._lock = threading.Lock()

    def detect(self, image: Image.Image, words: Sequence[str], threshold: float = DEFAULT_THRESHOLD,
               nms_iou: float = DEFAULT_NMS_IOU, max_boxes: int = DEFAULT_MAX_BOXES) -> list[Detection]:
        """The items of ``words`` found in an upright RGB photo, best first: boxes scoring above ``threshold``,
        after class-agnostic NMS at ``nms_iou``, clipped to the photo, at least ``MIN_REGION_SIDE`` pixels
        each way, at most ``max_boxes``. Boxes are whole pixels of ``image``.

        Raises:
            QueryError: no words, or a threshold, IoU or box count out of range.
        """
        from torchvision.ops import nms

        words = check_words(words)
        if not 0.0 <= threshold < 1.0 or not 0.0 < nms_iou <= 1.0 or max_boxes < 1:
            raise QueryError(f"detection needs 0 <= threshold < 1 (got {threshold:g}), 0 < IoU <= 1 (got "
                             f"{nms_iou:g}) and at least one box (got {max_boxes})")
        torch = self._torch
        width, height = image.size
        with self._lock, torch.inference_mode():
            inputs = self.processor(text=[list(words)], images=image, return_tensors="pt", truncation=True)
            outputs = self.model(**inputs.to(self.device))
            found = self.processor.post_process_grounded_object_detection(
                outputs, threshold=threshold, target_sizes=[(height, width)], text_labels=[list(words)])[0]
        boxes, scores = found["boxes"].float().cpu().clone(), found["scores"].float().cpu()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = nms(boxes, scores, nms_iou).tolist()
        detections = []
        for i in keep:
            x0, y0, x1, y1 = (round(v) for v in boxes[i].tolist())
            if x1 - x0 < MIN_REGION_SIDE or y1 - y0 < MIN_REGION_SIDE:
                continue
            label = found["text_labels"][i] if found.get("text_labels") is not None else words[int(found["labels"][i])]
            detections.append(Detection(str(label), float(scores[i]), Box(x0, y0, x1, y1)))
            if len(detections) == max_boxes:
                break
        return detections


def check_words(words: Sequence[str]) -> list[str]:
    """The query words, stripped, without repeats, in order.

    Raises:
        QueryError: none left, or more than ``MAX_WORDS``.
    """
    out = list(dict.fromkeys(str(w).strip() for w in words if str(w).strip()))
    if not out:
        raise QueryError("no words to look for in the photo; give some (--detect shirt jeans shoes) or let the "
                         "catalog's category values be used")
    if len(out) > MAX_WORDS:
        raise QueryError(f"{len(out)} words to look for; at most {MAX_WORDS} are taken in one detection")
    return out


@functools.lru_cache(maxsize=2)
def load_detector(name: str | None = None, device: str = "auto") -> Detector:
    """The detector ``name`` (see ``detector_name``) on ``device``, loaded once per process.

    Raises:
        ModelUnavailableError: see ``locate``.
    """
    return Detector(detector_name(name), device)


def _device(device: str):
    import torch

    if device in ("auto", "", None):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
