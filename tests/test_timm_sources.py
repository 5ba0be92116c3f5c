"""Any model timm can load: ``timm:local-dir:PATH`` and ``timm:hf-hub:ORG/NAME`` (timm's own ways to name a
model), with their config's preprocessing and model arguments, one-line errors naming the broken file, and a
catalog that notices a changed folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import hub_snapshot, make_image
from lookalike import Catalog
from lookalike.core.config import EncodeOptions
from lookalike.core.errors import CatalogError, ModelUnavailableError
from lookalike.models import create_embedder

QUIET = EncodeOptions(workers=0, progress=False, runtime="torch")
# Preprocessing unlike timm's defaults for the architecture, so a test can tell whose was used.
OWN_CFG = {"mean": [0.5, 0.25, 0.125], "std": [0.2, 0.3, 0.4], "interpolation": "bilinear", "crop_pct": 1.0,
           "crop_mode": "center", "input_size": [3, 96, 96]}


def save_timm_folder(folder: Path, seed: int = 0, pad_type: str = "same") -> Path:
    """timm's test_efficientnet saved as timm itself saves a model for the hub (save_for_hf): config.json with
    model_args and pretrained_cfg, model.safetensors."""
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model("test_efficientnet", pretrained=False, pad_type=pad_type)
    save_for_hf(model, str(folder), model_args={"pad_type": pad_type}, safe_serialization=True,
                model_config={"pretrained_cfg": {**model.pretrained_cfg, **OWN_CFG, "tag": "shop"}})
    return folder


@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory) -> Path:
    return save_timm_folder(tmp_path_factory.mktemp("model") / "shop-model")


def test_local_dir_model_uses_its_own_config_and_model_args(timm_folder):
    embedder = create_embedder(f"timm:local-dir:{timm_folder}")
    cfg = embedder.data_config
    assert cfg["mean"] == tuple(OWN_CFG["mean"]) or list(cfg["mean"]) == OWN_CFG["mean"]
    assert list(cfg["std"]) == OWN_CFG["std"] and cfg["interpolation"] == "bilinear"
    assert embedder.prepare(make_image_pil()).shape == (96, 96, 3)
    assert embedder.model_args["pad_type"] == "same" and "num_classes" not in embedder.model_args
    assert type(embedder.model.conv_stem).__name__ == "Conv2dSame"  # pad_type reached the constructor
    info = embedder.info
    assert info.name == f"timm:local-dir:{timm_folder.resolve()}"  # absolute: reopens from any folder
    assert info.timm_name == "test_efficientnet.shop" and info.weights.startswith("local-dir:")
    # the weights are the folder's, not random ones
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(timm_folder / "model.safetensors"))
    assert torch.equal(embedder.model.state_dict()["conv_stem.weight"], saved["conv_stem.weight"])


def make_image_pil():
    from PIL import Image

    return Image.new("RGB", (300, 200), (120, 30, 200))


@pytest.mark.parametrize("damage, named", [
    ("no-folder", "not found"),
    ("no-config", "config.json not found"),
    ("bad-json", "config.json is not a readable JSON file"),
    ("no-architecture", "names no \"architecture\""),
    ("no-weights", "no weights"),
    ("truncated-weights", "model.safetensors does not fit"),
    ("other-weights", "model.safetensors does not fit"),
])
def test_a_broken_model_folder_is_one_line_naming_the_file(tmp_path, timm_folder, damage, named):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(timm_folder, folder)
    config, weights = folder / "config.json", folder / "model.safetensors"
    if damage == "no-folder":
        shutil.rmtree(folder)
    elif damage == "no-config":
        config.unlink()
    elif damage == "bad-json":
        config.write_text('{"architecture": "test_efficientnet",')
    elif damage == "no-architecture":
        config.write_text(json.dumps({"num_classes": 10}))
    elif damage == "no-weights":
        weights.unlink()
    elif damage == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[:5000])
    elif damage == "other-weights":  # a resnet's weights beside an efficientnet's config
        data = json.loads(config.read_text())
        config.write_text(json.dumps({**data, "architecture": "test_resnet"}))
    with pytest.raises(ModelUnavailableError) as err:
        create_embedder(f"timm:local-dir:{folder}")
    message = str(err.value)
    assert named in message and "\n" not in message and str(folder) in message


@pytest.mark.slow  # several seconds: runs in .ci/run, not in the quick suite
def test_a_changed_model_folder_is_noticed_by_its_catalog(tmp_path, timm_folder):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(timm_folder, folder)
    photos = tmp_path / "photos"
    photos.mkdir()
    make_image(photos / "a.png", (200, 30, 30))
    with Catalog.create(tmp_path / "c.lk", f"timm:local-dir:{folder}") as catalog:
        catalog.add(photos, options=QUIET)
    with Catalog.open(tmp_path / "c.lk") as catalog:  # the same folder: opens and searches
        assert catalog.similar("a", k=1) == []
        assert catalog.search(photos / "a.png", k=1)[0].id == "a"
    save_timm_folder(folder, seed=1)  # retrained in place
    with Catalog.open(tmp_path / "c.lk") as catalog, pytest.raises(CatalogError, match="changed since"):
        catalog.search(photos / "a.png", k=1)


def test_hub_repo_model_loads_from_the_cache_offline(tmp_path, monkeypatch, timm_folder):
    import shutil

    from huggingface_hub import constants

    snapshot = hub_snapshot(tmp_path, "shop/own-model")
    for f in timm_folder.iterdir():
        shutil.copy(f, snapshot / f.name)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    embedder = create_embedder("timm:hf-hub:shop/own-model")
    local = create_embedder(f"timm:local-dir:{timm_folder}")
    assert embedder.info.weights.startswith("hf-hub:shop/own-model@")
    assert embedder.info.weights.endswith(local.info.weights.split(":")[1])  # same files, same digest
    assert list(embedder.data_config["mean"]) == OWN_CFG["mean"]
    x = np.stack([embedder.prepare(make_image_pil())])
    import torch

    with torch.no_grad():
        a = embedder.model(embedder.normalize(torch.from_numpy(x)))
        b = local.model(local.normalize(torch.from_numpy(x)))
    assert torch.allclose(a, b)


def test_uncached_hub_model_offline_fails_in_one_line_before_torch_is_imported(tmp_path):
    code = ("import sys; from lookalike.models import create_embedder\n"
            "from lookalike.core.errors import ModelUnavailableError\n"
            "for name in ('timm:hf-hub:shop/missing', 'resnet50'):\n"
            "    try:\n        create_embedder(name)\n    except ModelUnavailableError as e:\n        print(e)\n"
            "print('torch' in sys.modules)\n")
    env = {"PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3, out.stderr
    assert "shop/missing" in lines[0] and "HF_HUB_OFFLINE" in lines[0] and "mobilenetv2" in lines[0]
    assert "resnet50" in lines[1] and "mobilenetv2" in lines[1]  # names the model that works offline
    assert lines[2] == "False"


def test_model_names_timm_does_not_take_list_the_ways_to_name_one():
    from lookalike.core.errors import UnknownModelError

    with pytest.raises(UnknownModelError, match="timm:local-dir:PATH"):
        create_embedder("timm:no_such_architecture_xyz")
    with pytest.raises(ModelUnavailableError, match="timm:hf-hub:ORG/NAME"):
        create_embedder("timm:hf-hub:no-slash")
