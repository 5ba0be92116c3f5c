"""The letterbox transform: the PIL part of trained models, and how training packs store photos."""

from __future__ import annotations

from PIL import Image

FILL = 255  # letterbox bars: white, as product photos are shot on white


class Letterbox:
    """Resize to fit a ``size`` x ``size`` square keeping the aspect ratio, centred on white.

    A class rather than a closure so decoding workers receive it pickled; also the trained embedders' PIL
    transform, so a model sees catalog photos exactly as it saw its training pack.
    """

    def __init__(self, size: int, fill: int = FILL):
        self.size = int(size)
        self.fill = int(fill)

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        scale = self.size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        resized = img.convert("RGB").resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
        out = Image.new("RGB", (self.size, self.size), (self.fill,) * 3)
        out.paste(resized, ((self.size - nw) // 2, (self.size - nh) // 2))
        return out

    def __repr__(self) -> str:
        return f"Letterbox(size={self.size}, fill={self.fill})"
