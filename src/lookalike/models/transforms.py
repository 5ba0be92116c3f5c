"""The PIL half of a model's eval transform, as decoding workers run it: picklable, no PyTorch at import.

Shared by every network embedder whose preprocessing comes from its own config (timm's data config,
open_clip's preprocess config): the steps before ``ToTensor`` run in the workers on decoded photos; scaling
and normalisation run on the model's device.
"""

from __future__ import annotations

from PIL import Image


def pil_steps(transform) -> list:
    """The steps of a torchvision ``Compose`` before its ``ToTensor`` (or timm/open_clip ``MaybeToTensor``),
    without mode conversions (decoded photos are RGB already)."""
    steps = list(transform.transforms)
    cut = next(i for i, t in enumerate(steps) if type(t).__name__ in ("ToTensor", "MaybeToTensor"))
    return [t for t in steps[:cut] if type(t).__name__ not in ("MaybeConvertMode",)]


def pil_transform(steps: list):
    """The fastest equivalent of ``steps``: a cropped-box resize for [Resize(int), CenterCrop], else the steps."""
    from torchvision import transforms as T

    return ResizeCenterCrop.replacing(steps) or T.Compose(steps)


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


def smallest_side_needed(pil_steps: list, data_config: dict) -> int:
    """The shortest side the first resize produces: JPEG draft decoding may go down to it, not further."""
    for step in pil_steps:
        size = getattr(step, "size", None)
        if size is not None:
            return int(size if isinstance(size, int) else max(size))
    return int(max(data_config["input_size"][1:]))
