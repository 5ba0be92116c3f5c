"""Pretrained timm backbones as embedders, with preprocessing taken from each model's own data config."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from ..core.config import EmbedderInfo
from ..core.errors import ModelUnavailableError
from .base import RANDOM_SEED, RANDOM_WEIGHTS, prepare_with

log = logging.getLogger(__name__)



class TimmEmbedder:
    """A timm model without its classifier, plus the transform its weights were trained with.

    The PIL part of timm's eval transform (resize, crop) runs in the decoding workers and yields uint8
    HWC arrays, which are small to ship between processes; scaling and normalisation run on the model's
    device, the same arithmetic as timm's ``ToTensor`` + ``Normalize``.
    """

    def __init__(self, model: torch.nn.Module, info: EmbedderInfo):
        from timm.data import create_transform, resolve_data_config
        from torchvision import transforms as T

        self.needs_torch = True
        self.model = model.eval()
        self.info = info
        self.data_config = resolve_data_config({}, model=model)
        full = create_transform(**self.data_config, is_training=False)
        steps = list(full.transforms)
        cut = next(i for i, t in enumerate(steps) if type(t).__name__ in ("ToTensor", "MaybeToTensor"))
        self.timm_transform = full
        self.pil_transform = ResizeCenterCrop.replacing(steps[:cut]) or T.Compose(steps[:cut])
        self.mean = torch.tensor(self.data_config["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(self.data_config["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.draft_size = _smallest_side_needed(steps[:cut], self.data_config)

    @property
    def dim(self) -> int:
        return self.info.dim

    def prepare(self, img: Image.Image) -> np.ndarray:
        """Resize and crop an RGB image as the model expects: uint8 array, height x width x 3."""
        return prepare_with(self.pil_transform, img)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W x 3 -> normalised float N x 3 x H x W (channels-last in memory)."""
        x = batch.permute(0, 3, 1, 2).float().div_(255)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return x.sub_(mean).div_(std)

    def tensor(self, img: Image.Image) -> torch.Tensor:
        """The model input for one image, 3 x H x W float: what timm's own transform would give."""
        arr = torch.from_numpy(self.prepare(img).copy())
        return self.normalize(arr.unsqueeze(0))[0].contiguous()


class ResizeCenterCrop:
    """torchvision's ``Resize(shortest side)`` then ``CenterCrop``, computed only for the kept pixels.

    Pillow's ``resize(box=...)`` places the filter taps exactly where the full resize would, so the result
    matches within one grey level of rounding, while skipping the rows and columns the crop throws away
    (a third of a portrait product photo; 0.6 ms instead of 1.1 ms a photo).
    """

    def __init__(self, size: int, crop: tuple[int, int], resample: int):
        self.size, self.crop, self.resample = size, crop, resample

    @classmethod
    def replacing(cls, steps: list) -> ResizeCenterCrop | None:
        """This transform for exactly [Resize(int), CenterCrop] steps, else None (keep timm's)."""
        from torchvision import transforms as T
        from torchvision.transforms.functional import pil_modes_mapping

        if len(steps) != 2 or type(steps[0]) is not T.Resize or type(steps[1]) is not T.CenterCrop:
            return None
        resize, crop = steps
        size = resize.size[0] if isinstance(resize.size, (list, tuple)) and len(resize.size) == 1 else resize.size
        if not isinstance(size, int) or resize.max_size is not None:
            return None
        return cls(size, (int(crop.size[0]), int(crop.size[1])), pil_modes_mapping[resize.interpolation])

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        # torchvision's own size rule: the short side becomes ``size``, the long side is truncated.
        nw, nh = (self.size, int(self.size * h / w)) if w <= h else (int(self.size * w / h), self.size)
        ch, cw = self.crop
        if ch > nh or cw > nw:  # CenterCrop would pad: leave that to torchvision
            from torchvision.transforms import functional as TF

            return TF.center_crop(img.resize((nw, nh), self.resample) if (nw, nh) != (w, h) else img, [ch, cw])
        top, left = int(round((nh - ch) / 2.0)), int(round((nw - cw) / 2.0))
        if (nw, nh) == (w, h):
            return img.crop((left, top, left + cw, top + ch))
        sx, sy = w / nw, h / nh
        return img.resize((cw, ch), self.resample, box=(left * sx, top * sy, (left + cw) * sx, (top + ch) * sy))

    def __repr__(self) -> str:
        return f"ResizeCenterCrop(size={self.size}, crop={self.crop}, resample={self.resample})"


def _smallest_side_needed(pil_steps: list, data_config: dict) -> int:
    """The shortest side the first resize produces: JPEG draft decoding may go down to it, not further."""
    for step in pil_steps:
        size = getattr(step, "size", None)
        if size is not None:
            return int(size if isinstance(size, int) else max(size))
    return int(max(data_config["input_size"][1:]))


def create_timm_embedder(name: str, timm_name: str, *, pool: str | None, weights: str | None) -> TimmEmbedder:
    """Create the backbone with its weights; see ``registry.create_embedder``."""
    import timm

    kwargs: dict = {"num_classes": 0}
    if pool is not None:
        kwargs["global_pool"] = pool
    try:
        if weights is None:
            _check_hub_reachable(name, timm_name)
            model = timm.create_model(timm_name, pretrained=True, **kwargs)
            source = model.pretrained_cfg.get("hf_hub_id") or model.pretrained_cfg.get("url") or timm_name
            weights_id = f"hf-hub:{source}"
        elif weights == RANDOM_WEIGHTS:
            torch.manual_seed(RANDOM_SEED)
            model = timm.create_model(timm_name, pretrained=False, **kwargs)
            weights_id = f"random:{RANDOM_SEED}"
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise ModelUnavailableError(
                    f"cannot load weights for {name}: file {path} not found; pass --weights with an existing "
                    ".safetensors or .pth file"
                )
            model = timm.create_model(
                timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path), "hf_hub_id": None,
                                                                     "url": None}, **kwargs
            )
            weights_id = f"file:{_file_digest(path)}"
    except ModelUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub, network, pickle and shape errors all mean "no weights"
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        where = f"file {weights}" if weights not in (None, RANDOM_WEIGHTS) else "the Hugging Face hub"
        raise ModelUnavailableError(
            f"cannot load weights for {name} ({timm_name}) from {where}: {reason}. {_fixes()}"
        ) from exc
    info = EmbedderInfo(
        name=name,
        timm_name=timm_name,
        weights=weights_id,
        # Models with a pre-logits layer (MobileNetV3, some ViTs) output head_hidden_size, not num_features.
        dim=int(getattr(model, "head_hidden_size", None) or model.num_features),
        pool=pool or str(getattr(getattr(model, "global_pool", None), "pool_type", "default") or "default"),
    )
    return TimmEmbedder(model, info)


def _fixes() -> str:
    home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return (
        f"Fixes: run once with internet access so timm caches them under HF_HOME={home}; "
        "or copy that cache here; or pass --weights PATH to a local .safetensors/.pth file"
    )


def _check_hub_reachable(name: str, timm_name: str) -> None:
    """Fail in seconds, not minutes of retries, when weights are neither cached nor reachable."""
    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        raise ModelUnavailableError(f"{timm_name} has no pretrained weights in timm; pass --weights PATH")
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(hub_id, filename), str):
                return
        if constants.HF_HUB_OFFLINE:
            raise ModelUnavailableError(
                f"cannot load weights for {name} ({timm_name}): HF_HUB_OFFLINE is set and {hub_id} is not in "
                f"the cache. {_fixes()}"
            )
        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
        port = urlparse(constants.ENDPOINT).port or 443
    else:
        url = getattr(cfg, "url", None)
        if not url:
            raise ModelUnavailableError(f"{timm_name} has no downloadable weights in timm; pass --weights PATH")
        host, port = urlparse(url).hostname or "", 443
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # behind a proxy a direct probe says nothing; let the hub client try
    try:
        socket.create_connection((host, port), timeout=float(os.environ.get("LOOKALIKE_HUB_TIMEOUT", "5"))).close()
    except OSError as exc:
        raise ModelUnavailableError(
            f"cannot load weights for {name} ({timm_name}): {host} is unreachable ({exc.strerror or exc}) and "
            f"the weights are not cached. {_fixes()}"
        ) from exc


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
