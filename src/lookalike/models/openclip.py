"""Text+image models (CLIP, SigLIP, SigLIP 2 and their fine-tunes) through open_clip, as embedders.

The image tower is an embedder like a timm backbone: its PIL steps come from the model's own preprocess
config (open_clip's ``image_transform_v2``, cut before ``ToTensor``) and run in the decoding workers; the
normalisation runs on the model's device. The text tower maps tokens to vectors in the same space; the
tokenizer is loaded the first time words are embedded, so indexing photos never needs it.

Where a model comes from:

- ``<arch>/<tag>`` (``open_clip:ViT-B-32-quickgelu/openai``): open_clip's own config for the architecture,
  the tag's preprocessing, and the tag's weights from the hub cache;
- ``hf-hub:<repo>`` (``hf-hub:Marqo/marqo-fashionSigLIP``): ``open_clip_config.json`` and
  ``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``) from the hub cache;
- ``--weights FILE`` (any checkpoint open_clip loads) or ``--weights random`` (seeded) for either;
- a model config dict (``.lkm`` files from ``lookalike train clip``, and ``TINY_CONFIG``).

open_clip itself falls back to random weights, with only a log line, when a hub checkpoint is missing; here a
missing file is an error, said in one line.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image

from ..core.config import EmbedderInfo
from ..core.errors import ModelUnavailableError, UnknownModelError
from .base import RANDOM_SEED, RANDOM_WEIGHTS, prepare_with
from .hub import file_digest, fixes, hub_file, hub_offline, probe
from .transforms import pil_steps, pil_transform, smallest_side_needed

log = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
SIMPLE_TOKENIZER = "simple"  # open_clip's OpenAI BPE tokenizer, shipped with open_clip (no download)
CLIP_POOL = "clip"  # EmbedderInfo.pool of text+image models: the model's own projection

# A small text+image model for machines without the hub (``lookalike train clip --base tiny``) and for
# tests: ViT 64 px, 16 px patches, 2 layers of width 128; text transformer 2 layers of width 128, the OpenAI
# tokenizer's vocabulary, 32 tokens; 128-d joint space. About 7.3M parameters (6.3M of them the token table).
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "head_width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}


@dataclass(frozen=True)
class ClipRecipe:
    """What builds a text+image model: its open_clip config, preprocessing, tokenizer and weights source."""

    model_cfg: dict
    preprocess: dict  # open_clip PreprocessCfg fields (size, mean, std, interpolation, resize_mode, fill_color)
    tokenizer: str  # SIMPLE_TOKENIZER, an open_clip architecture, or hf-hub:<repo>
    weights_repo: str = ""  # hub repo of the pretrained weights
    weights_files: tuple[str, ...] = WEIGHT_FILES
    weights_url: str = ""  # open_clip tags without a hub copy
    letterbox: int = 0  # models from `lookalike train clip`: photos letterboxed to this square, as in training

    @property
    def context_length(self) -> int:
        return int(self.model_cfg.get("text_cfg", {}).get("context_length", 77))


class TextTower(torch.nn.Module):
    """Tokens -> text features (not normalised), the text half of a CLIP model."""

    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)


class OpenClipEmbedder:
    """A text+image model: ``model`` is the image tower (uint8 photos through ``normalize`` -> features),
    ``text_model`` the text tower (``tokenize(texts)`` -> features), both into one space of ``dim``."""

    has_text = True

    def __init__(self, clip: torch.nn.Module, info: EmbedderInfo, recipe: ClipRecipe):
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.needs_torch = True
        self.clip = clip.eval()
        self.model = self.clip.visual
        self.text_model = TextTower(self.clip).eval()
        self.info = info
        self.recipe = recipe
        self.preprocess = dict(recipe.preprocess)
        mean, std = _triple(self.preprocess["mean"]), _triple(self.preprocess["std"])
        if recipe.letterbox:
            from .letterbox import Letterbox

            self.clip_transform = None
            self.pil_transform = Letterbox(recipe.letterbox)
            h = w = self.draft_size = recipe.letterbox
        else:
            self.clip_transform = image_transform_v2(PreprocessCfg(**self.preprocess), is_train=False)
            steps = pil_steps(self.clip_transform)
            self.pil_transform = pil_transform(steps)
            size = self.preprocess["size"]
            h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.data_config = {"mean": mean, "std": std, "input_size": (3, h, w)}
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        if not recipe.letterbox:
            self.draft_size = smallest_side_needed(steps, self.data_config)
        self._tokenizer = None

    @property
    def dim(self) -> int:
        return self.info.dim

    def image_only(self) -> OpenClipEmbedder:
        """This embedder without its text tower: the same image tower (shared, not copied), its learned
        temperature and bias, ``has_text`` False. What a worker that only embeds photos needs: a Ray actor
        receives this (ViT-B/32: 63 M of its 151 M parameters are the text tower)."""
        twin = copy.copy(self)
        holder = torch.nn.Module()
        holder.visual = self.clip.visual
        holder.logit_scale = self.clip.logit_scale
        if getattr(self.clip, "logit_bias", None) is not None:
            holder.logit_bias = self.clip.logit_bias
        twin.clip = holder.eval()
        twin.model = holder.visual
        twin.text_model = None
        twin.has_text = False
        twin._tokenizer = None
        return twin

    @property
    def logit_scale(self) -> float:
        """The learned temperature: similarities times this are the model's logits."""
        return float(self.clip.logit_scale.detach().float().exp().item())

    @property
    def logit_bias(self) -> float | None:
        """SigLIP models' learned bias (their logits go through a sigmoid, not a softmax); None for CLIP."""
        bias = getattr(self.clip, "logit_bias", None)
        return None if bias is None else float(bias.detach().float().reshape(-1)[0].item())

    def prepare(self, img: Image.Image) -> np.ndarray:
        """Resize and crop an RGB image as the model expects: uint8 array, height x width x 3."""
        return prepare_with(self.pil_transform, img)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W x 3 -> normalised float N x 3 x H x W, the arithmetic of ``ToTensor`` + ``Normalize``."""
        x = batch.permute(0, 3, 1, 2).float().div_(255)
        return x.sub_(self.mean.to(x.device)).div_(self.std.to(x.device))

    def tensor(self, img: Image.Image) -> torch.Tensor:
        """The model input for one image, 3 x H x W float: what open_clip's own transform would give."""
        arr = torch.from_numpy(self.prepare(img).copy())
        return self.normalize(arr.unsqueeze(0))[0].contiguous()

    @property
    def tokenizer(self):
        """open_clip's tokenizer for this model, loaded on first use.

        Raises:
            ModelUnavailableError: its files are not cached (offline), or a package it needs is missing.
        """
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.info.name, self.recipe)
        return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> N x context_length token ids (long), cut to the model's context length; a text that is cut
        is said once, as a warning with how many of its tokens were used."""
        texts = list(texts)
        tokens = self.tokenizer(texts)
        context = int(tokens.shape[1])
        for text in texts:
            length = token_count(self.tokenizer, text)
            if length is not None and length > context:
                log.warning("words cut to %s's context: %d of %d tokens used (%r ends the part that counts)",
                            self.info.name, context, length, _kept_words(text, context / length))
        return tokens


def token_count(tokenizer, text: str) -> int | None:
    """How many tokens ``text`` makes before it is cut to the context (start and end tokens included); None for
    a tokenizer this cannot ask."""
    try:
        if isinstance(tokenizer, open_clip.SimpleTokenizer):
            return len(tokenizer.encode(text)) + 2
        inner = getattr(tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a transformers tokenizer
        if inner is not None and callable(inner):
            clean = getattr(tokenizer, "clean_fn", None)
            return len(inner(clean(text) if clean else text)["input_ids"])
    except Exception:  # noqa: BLE001 - counting is a courtesy; the query goes on without it
        return None
    return None


def _kept_words(text: str, share: float) -> str:
    """The last few words of the part of ``text`` that roughly fits (``share`` of its tokens)."""
    words = text.split()
    kept = words[:max(1, int(len(words) * share))]
    tail = " ".join(kept[-4:])
    return tail if len(tail) <= 40 else tail[-40:]


def _triple(value) -> tuple[float, float, float]:
    values = tuple(float(v) for v in (value if isinstance(value, (list, tuple)) else (value,) * 3))
    return values if len(values) == 3 else (values[0],) * 3


def load_tokenizer(name: str, recipe: ClipRecipe):
    """The tokenizer a recipe names (see ``ClipRecipe.tokenizer``), for its context length.

    Raises:
        ModelUnavailableError: not cached and offline, unreachable, or a package it needs is missing.
    """
    source, context_length = recipe.tokenizer, recipe.context_length
    try:
        with quiet():
            if source == SIMPLE_TOKENIZER:
                return open_clip.SimpleTokenizer(context_length=context_length)
            return open_clip.get_tokenizer(source, context_length=context_length)
    except ImportError as exc:
        package = exc.name or "transformers"
        raise ModelUnavailableError(f"the tokenizer of {name} needs the {package} package: pip install {package}") \
            from exc
    except Exception as exc:  # noqa: BLE001 - hub, file and format errors all mean "no tokenizer"
        repo = recipe.model_cfg.get("text_cfg", {}).get("hf_tokenizer_name") or source
        hint = "HF_HUB_OFFLINE is set and its files are not in the cache" if hub_offline() else _first_line(exc)
        raise ModelUnavailableError(
            f"cannot load the tokenizer of {name} ({repo}): {hint}. {fixes('tokenizer files')}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """open_clip reports on the root logger (e.g. "initialized randomly" for seeded random weights, which is
    what was asked): keep those lines off the user's terminal while a model is built."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def recipe_for(name: str, source: str, need_weights: bool) -> ClipRecipe:
    """Resolve ``<arch>/<tag>``, ``<arch>`` or ``hf-hub:<repo>`` to a recipe (config files come from the hub
    cache for ``hf-hub:``).

    Raises:
        UnknownModelError: unknown architecture or tag (the message lists valid ones).
        ModelUnavailableError: a hub config that cannot be had; no tag while pretrained weights are asked for.
    """
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    defaults = PreprocessCfg()
    if source.startswith(HUB_PREFIX):
        repo = source[len(HUB_PREFIX):].strip("/")
        if repo.count("/") != 1:
            raise UnknownModelError(f"{name}: write hf-hub:<owner>/<repo>, e.g. hf-hub:Marqo/marqo-fashionSigLIP")
        path = hub_file(name, repo, (CONFIG_FILE,), what="model config")
        try:
            config = json.loads(Path(path).read_text(encoding="utf-8"))
            model_cfg = config["model_cfg"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelUnavailableError(f"{name}: {repo}'s {CONFIG_FILE} is not an open_clip config ({exc})") from exc
        return ClipRecipe(model_cfg=model_cfg,
                          preprocess=merge_preprocess_dict(defaults, config.get("preprocess_cfg", {})),
                          tokenizer=f"{HUB_PREFIX}{repo}", weights_repo=repo)
    arch, _, tag = source.partition("/")
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        import difflib

        close = difflib.get_close_matches(arch, open_clip.list_models(), n=8, cutoff=0.6)
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise UnknownModelError(f"unknown open_clip architecture {arch!r}{hint} (open_clip.list_models() has all)")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not tag:
        if need_weights:
            raise ModelUnavailableError(
                f"{name} names no pretrained weights: write open_clip:{arch}/<tag> (tags: {', '.join(tags) or 'none'}),"
                " or pass --weights FILE or --weights random")
        return ClipRecipe(model_cfg=model_cfg, preprocess=merge_preprocess_dict(defaults, {}), tokenizer=arch)
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch, tag)
    if not cfg:
        raise UnknownModelError(f"open_clip {arch} has no pretrained tag {tag!r}; tags: {', '.join(tags) or 'none'}")
    if cfg.get("quick_gelu") and not model_cfg.get("quick_gelu"):
        model_cfg["quick_gelu"] = True  # the tag was trained with QuickGELU: build it so, or the vectors are wrong
    hub = str(cfg.get("hf_hub") or "").strip()
    repo, files = "", WEIGHT_FILES
    if hub:
        parts = hub.strip("/").split("/")
        repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
        if filename:
            stem, dot, ext = filename.rpartition(".")
            files = ((f"{stem}.safetensors",) if dot and ext in ("bin", "pth") else ()) + (filename,)
    return ClipRecipe(model_cfg=model_cfg, preprocess=merge_preprocess_dict(defaults, cfg), tokenizer=arch,
                      weights_repo=repo, weights_files=files, weights_url="" if repo else str(cfg.get("url") or ""))


def build_clip(model_cfg: dict) -> torch.nn.Module:
    """An open_clip model from its config, randomly initialised (seed first for repeatable weights); no tower
    weights are fetched, whatever the config says."""
    cfg = copy.deepcopy(model_cfg)
    vision, text = cfg.setdefault("vision_cfg", {}), cfg.setdefault("text_cfg", {})
    if "timm_model_name" in vision:
        vision["timm_model_pretrained"] = False
    if "hf_model_name" in text:
        text["hf_model_pretrained"] = False
    if "multimodal_cfg" in cfg:
        raise ModelUnavailableError("captioning models (CoCa) are not supported; choose a CLIP or SigLIP model")
    custom = cfg.pop("custom_text", False) or "hf_model_name" in text
    with quiet():
        return (open_clip.CustomTextCLIP if custom else open_clip.CLIP)(**cfg)


def create_clip_embedder(name: str, source: str, weights: str | None = None) -> OpenClipEmbedder:
    """Build a text+image model; see the module docstring for ``source`` and ``registry.create_embedder`` for
    ``weights``.

    Raises:
        UnknownModelError: unknown architecture or tag.
        ModelUnavailableError: weights or config cannot be had; the message says why and how to fix it.
    """
    recipe = recipe_for(name, source, need_weights=weights is None)
    try:
        if weights == RANDOM_WEIGHTS:
            torch.manual_seed(RANDOM_SEED)
            clip = build_clip(recipe.model_cfg)
            weights_id = f"random:{RANDOM_SEED}"
        elif weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise ModelUnavailableError(f"cannot load weights for {name}: file {path} not found; pass --weights "
                                            "with an existing open_clip checkpoint (.safetensors, .bin, .pt)")
            clip = build_clip(recipe.model_cfg)
            with quiet():
                open_clip.load_checkpoint(clip, str(path))
            weights_id = f"file:{file_digest(path)}"
        else:
            checkpoint, weights_id = _pretrained_checkpoint(name, recipe)
            clip = build_clip(recipe.model_cfg)
            with quiet():
                open_clip.load_checkpoint(clip, checkpoint)
    except (ModelUnavailableError, UnknownModelError):
        raise
    except Exception as exc:  # noqa: BLE001 - pickle, shape and key errors all mean "not these weights"
        where = f"file {weights}" if weights not in (None, RANDOM_WEIGHTS) else "the Hugging Face hub"
        raise ModelUnavailableError(f"cannot load weights for {name} ({source}) from {where}: {_first_line(exc)}. "
                                    f"{fixes()}") from exc
    return embedder_from(clip, name, f"open_clip:{source}", weights_id, recipe)


def embedder_from(clip: torch.nn.Module, name: str, what: str, weights_id: str, recipe: ClipRecipe
                  ) -> OpenClipEmbedder:
    """Wrap a built model; the preprocessing size follows the image tower (as open_clip's factory does)."""
    preprocess = dict(recipe.preprocess)
    size = getattr(clip.visual, "image_size", None)
    if size is not None:
        preprocess["size"] = tuple(size) if isinstance(size, (list, tuple)) else int(size)
    recipe = ClipRecipe(**{**recipe.__dict__, "preprocess": preprocess})
    info = EmbedderInfo(name=name, timm_name=what, weights=weights_id, dim=int(recipe.model_cfg["embed_dim"]),
                        pool=CLIP_POOL, text=True)
    return OpenClipEmbedder(clip, info, recipe)


def _pretrained_checkpoint(name: str, recipe: ClipRecipe) -> tuple[str, str]:
    """The local path of a recipe's pretrained weights and the weights id a catalog records."""
    if recipe.weights_repo:
        return hub_file(name, recipe.weights_repo, recipe.weights_files), f"hf-hub:{recipe.weights_repo}"
    if not recipe.weights_url:
        raise ModelUnavailableError(f"{name} has no downloadable weights in open_clip; pass --weights PATH")
    from urllib.parse import urlparse

    from open_clip.pretrained import download_pretrained_from_url

    cached = Path("~/.cache/clip").expanduser() / Path(urlparse(recipe.weights_url).path).name
    if not cached.is_file():
        if hub_offline():
            raise ModelUnavailableError(f"cannot load weights for {name}: HF_HUB_OFFLINE is set and {cached} is not "
                                        f"downloaded. {fixes()}")
        probe(name, recipe.weights_url, urlparse(recipe.weights_url).hostname or "", 443)
    return download_pretrained_from_url(recipe.weights_url), f"url:{recipe.weights_url}"


def tiny_recipe() -> ClipRecipe:
    """``TINY_CONFIG`` with CLIP's preprocessing (224 -> 64 px) and the OpenAI tokenizer."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    return ClipRecipe(model_cfg=copy.deepcopy(TINY_CONFIG), preprocess=merge_preprocess_dict(PreprocessCfg(), {}),
                      tokenizer=SIMPLE_TOKENIZER)


def load_clip_file(name: str, meta, state: dict, digest: str) -> OpenClipEmbedder:
    """A text+image model from a ``.lkm`` of ``lookalike train clip``: its open_clip config, tokenizer source and
    letterbox preprocessing are in the file's header, every weight in its tensors.

    Raises:
        ModelFileError: the recorded architecture cannot be rebuilt, or the weights do not fit it.
    """
    from ..core.errors import ModelFileError
    from .modelfile import load_weights

    arch, pre = meta.arch, meta.preprocess
    try:
        torch.manual_seed(RANDOM_SEED)
        clip = build_clip(arch["model_cfg"])
    except Exception as exc:  # noqa: BLE001 - an edited architecture record fails in many ways
        raise ModelFileError(f"{name}: cannot rebuild the recorded architecture ({_first_line(exc)}); train the "
                             "model again") from exc
    load_weights(clip, state, name)
    recipe = ClipRecipe(model_cfg=arch["model_cfg"], preprocess={**arch.get("clip_preprocess", {}),
                                                                 "mean": pre["mean"], "std": pre["std"]},
                        tokenizer=arch["tokenizer"], letterbox=int(pre["size"]))
    info = EmbedderInfo(name=name, timm_name=f"lkm:clip-{arch.get('base', 'model')}-{arch['model_cfg']['embed_dim']}d",
                        weights=f"file:{digest}", dim=int(arch["model_cfg"]["embed_dim"]), pool=CLIP_POOL, text=True)
    return OpenClipEmbedder(clip.eval(), info, recipe)


def similarity_logits(embedder: OpenClipEmbedder, sims: np.ndarray) -> np.ndarray:
    """Cosine similarities -> the model's own logits (scale, plus SigLIP's bias)."""
    bias = embedder.logit_bias
    return sims * embedder.logit_scale + (bias if bias is not None else 0.0)
