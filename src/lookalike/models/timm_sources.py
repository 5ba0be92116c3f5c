"""Where a timm model's config and weights come from, checked before PyTorch is imported.

timm names a model three ways (timm ``parse_model_name``): ``architecture.tag`` from its own registry (weights
on the Hugging Face hub or a URL), ``hf-hub:ORG/NAME`` (a hub repo holding ``config.json`` and the weights,
as ``timm.models.push_to_hf_hub`` writes it) and ``local-dir:PATH`` (the same two files in a folder). The
last two carry their preprocessing (``pretrained_cfg``) and constructor arguments (``model_args``, e.g.
``pad_type``) in ``config.json``.

Everything here reads files and JSON only (no PyTorch, no timm), so a missing or broken file is said in one
line within a second, and ``weights_id`` gives the content digest a catalog records to notice a changed
folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ModelUnavailableError
from .hub import cached_file, fixes, hub_offline, probe_hub

HUB_SOURCE = "hf-hub:"
LOCAL_SOURCE = "local-dir:"
CONFIG_FILE = "config.json"
HEAD_ARGS = ("num_classes", "global_pool")
# The weight files timm's own folder loader looks for, in its order (timm.models._hub._PREFERRED_FILES).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


@dataclass(frozen=True)
class TimmSource:
    """A timm model folder (local, or a hub repo's cached snapshot) whose two files have been checked.

    ``name``: what ``timm.create_model`` takes (``local-dir:/abs/path`` or ``hf-hub:ORG/NAME``);
    ``architecture``: timm's ``architecture[.tag]`` from config.json; ``config`` and ``weights``: the files.
    """

    name: str
    architecture: str
    config: Path
    weights: Path

    def loader_name(self) -> str:
        """The name timm loads from with no network: the folder, or a hub repo's cached snapshot folder."""
        if self.name.startswith(LOCAL_SOURCE) or self.config.parent != self.weights.parent:
            return self.name
        return LOCAL_SOURCE + str(self.config.parent)

    def model_args(self) -> dict:
        """config.json's ``model_args``: constructor arguments the weights need (e.g. ``pad_type``), less the
        head's (``num_classes``, ``global_pool``), which an embedder sets itself."""
        args = json.loads(self.config.read_text(encoding="utf-8")).get("model_args") or {}
        return {k: v for k, v in args.items() if k not in HEAD_ARGS} if isinstance(args, dict) else {}

    def digest(self) -> str:
        """First 16 hex digits of the sha256 of config.json then the weights: what identifies this model."""
        h = hashlib.sha256()
        for path in (self.config, self.weights):
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()[:16]


def is_timm_source(timm_name: str) -> bool:
    return timm_name.startswith((HUB_SOURCE, LOCAL_SOURCE))


def canonical_source(timm_name: str) -> str:
    """``local-dir:`` with an absolute path (a catalog reopens from any folder); other names as they are."""
    if timm_name.startswith(LOCAL_SOURCE):
        return LOCAL_SOURCE + str(Path(timm_name[len(LOCAL_SOURCE):]).expanduser().resolve())
    return timm_name


def locate(model: str, timm_name: str) -> TimmSource:
    """Check a ``local-dir:`` or ``hf-hub:`` model's config.json and weights and return where they are.

    ``model`` is the name the user typed (for messages).

    Raises:
        ModelUnavailableError: a missing folder, config.json or weight file (named), a config.json that is not
            a timm config, or hub files neither cached nor reachable.
    """
    if timm_name.startswith(LOCAL_SOURCE):
        folder = Path(timm_name[len(LOCAL_SOURCE):]).expanduser()
        if not str(folder) or not folder.is_dir():
            raise ModelUnavailableError(
                f"cannot load {model}: model folder {folder} not found; give local-dir: a folder holding "
                f"{CONFIG_FILE} and {WEIGHT_FILES[0]} (timm's layout)"
            )
        config = folder / CONFIG_FILE
        if not config.is_file():
            raise ModelUnavailableError(
                f"cannot load {model}: {config} not found; a timm model folder holds {CONFIG_FILE} (architecture "
                f"and preprocessing) beside {WEIGHT_FILES[0]}"
            )
        weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
        if weights is None:
            raise ModelUnavailableError(
                f"cannot load {model}: {folder} holds {CONFIG_FILE} but no weights ({' or '.join(WEIGHT_FILES)})"
            )
        return TimmSource(canonical_source(timm_name), read_architecture(model, config), config, weights)
    repo = timm_name[len(HUB_SOURCE):].split("@")[0]
    if not repo or repo.count("/") != 1:
        raise ModelUnavailableError(f"cannot load {model}: write timm:hf-hub:ORG/NAME, e.g. "
                                    "timm:hf-hub:timm/mobilenetv2_100.ra_in1k")
    config_path = cached_file(repo, (CONFIG_FILE,))
    weights_path = cached_file(repo, WEIGHT_FILES[:2])
    if config_path is None or weights_path is None:
        missing = " and ".join(f for f, p in ((CONFIG_FILE, config_path), ("weights", weights_path)) if p is None)
        if hub_offline():
            raise ModelUnavailableError(
                f"cannot load {model}: HF_HUB_OFFLINE is set and {missing} of {repo} are not in the cache. "
                f"{fixes()}"
            )
        probe_hub(model, repo)
        from huggingface_hub import hf_hub_download

        try:
            config_path = config_path or hf_hub_download(repo, CONFIG_FILE)
            weights_path = weights_path or _download_first(repo)
        except Exception as exc:  # noqa: BLE001 - network, authentication, missing repo or file: one line
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelUnavailableError(f"cannot load {model} from the hub ({repo}): {reason}. {fixes()}") from exc
    return TimmSource(HUB_SOURCE + repo, read_architecture(model, Path(config_path)), Path(config_path),
                      Path(weights_path))


def _download_first(repo: str) -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for filename in WEIGHT_FILES[:2]:
        try:
            return hf_hub_download(repo, filename)
        except EntryNotFoundError:
            continue
    raise ModelUnavailableError(f"{repo} on the hub holds no {' or '.join(WEIGHT_FILES[:2])}")


def read_architecture(model: str, config: Path) -> str:
    """timm's ``architecture[.tag]`` named by a model folder's config.json.

    Raises:
        ModelUnavailableError: the file is not JSON, or names no architecture.
    """
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelUnavailableError(f"cannot load {model}: {config} is not a readable JSON file ({exc}); "
                                    "restore it from the model's source") from exc
    architecture = data.get("architecture") if isinstance(data, dict) else None
    if not isinstance(architecture, str) or not architecture:
        raise ModelUnavailableError(f"cannot load {model}: {config} names no \"architecture\"; it is not a timm "
                                    "model config (timm writes one with save_for_hf / push_to_hf_hub)")
    cfg = data.get("pretrained_cfg") or {}
    tag = cfg.get("tag") if isinstance(cfg, dict) else None
    return f"{architecture}.{tag}" if tag and "." not in architecture else architecture
