"""Text+image models through open_clip: the registry names, weights and tokenizers from a hub cache laid out
as the hub client makes it (offline), preprocessing equal to open_clip's own, both towers equal to open_clip's
own model, and one-line failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_CLIP, TINY_CLIP_REPO, hub_snapshot, make_image, save_clip
from lookalike.core.config import EncodeOptions
from lookalike.core.errors import ModelUnavailableError, NoTextModelError, UnknownModelError
from lookalike.core.images import load_image
from lookalike.engines.embed import Encoder
from lookalike.models import create_embedder, list_models, resolve

TEXT_NAMES = {"clip-vit-b32", "siglip2-base", "fashion-clip", "fashion-siglip"}


def test_registry_names_the_text_models_and_where_they_come_from():
    models = list_models()
    assert TEXT_NAMES <= {name for name, spec in models.items() if spec.text}
    assert not models["resnet50"].text and not models["pixels"].text
    assert models["fashion-siglip"].clip == "hf-hub:Marqo/marqo-fashionSigLIP"
    assert models["fashion-clip"].clip == "hf-hub:Marqo/marqo-fashionCLIP"
    assert resolve("open_clip:ViT-B-32/laion2b_s34b_b79k").clip == "ViT-B-32/laion2b_s34b_b79k"
    assert resolve("hf-hub:Marqo/marqo-fashionSigLIP").text
    with pytest.raises(UnknownModelError, match="open_clip:<architecture>/<pretrained tag>"):
        resolve("open_clip:")


def test_models_command_marks_which_models_understand_words():
    from lookalike.cli import main

    res = subprocess.run([sys.executable, "-m", "lookalike.cli", "models", "--json"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    rows = {row["name"]: row["understands"] for row in json.loads(res.stdout)}
    assert {name: rows[name] for name in TEXT_NAMES} == dict.fromkeys(TEXT_NAMES, "text+image")
    assert rows["resnet50"] == "image" and rows["hf-hub:<repo>"] == "text+image"
    assert main(["models"]) == 0


def test_weights_and_config_come_from_the_hub_cache(tiny_clip, clip_hub):
    from safetensors.torch import load_file

    snapshot = hub_snapshot(clip_hub, TINY_CLIP_REPO)
    saved = load_file(str(snapshot / "open_clip_model.safetensors"))
    loaded = tiny_clip.clip.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    info = tiny_clip.info
    assert (info.name, info.weights, info.dim, info.pool, info.text) == (
        TINY_CLIP, f"hf-hub:{TINY_CLIP_REPO}", 128, "clip", True)
    assert "text+image" in info.describe()


def test_both_towers_give_open_clips_own_vectors(tiny_clip, tmp_path):
    """Our image path (PIL step in workers, normalisation on the device) and text path give what open_clip's
    own transform, tokenizer and ``encode_image``/``encode_text`` give."""
    import open_clip

    paths = [make_image(tmp_path / f"{i}.jpg", color=(50 * i, 90, 200 - 40 * i), size=(120, 160), shape="ellipse",
                        quality=95) for i in range(3)]
    encoder = Encoder(tiny_clip, EncodeOptions(device="cpu", precision="fp32", workers=0))
    ours = encoder.encode(paths)
    texts = ["red floral summer dress", "black leather boots for men", ""]
    words = encoder.encode_text(texts)
    assert ours.shape == (3, 128) and words.shape == (3, 128) and ours.dtype == words.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(words, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(encoder.encode_text(texts[0]), words[0], atol=1e-6)
    with torch.no_grad():
        batch = torch.stack([tiny_clip.clip_transform(load_image(p)) for p in paths])
        theirs = tiny_clip.clip.encode_image(batch, normalize=True).numpy()
        tokens = open_clip.SimpleTokenizer(context_length=32)(texts)
        their_words = tiny_clip.clip.encode_text(tokens, normalize=True).numpy()
    assert (ours * theirs).sum(axis=1).min() > 0.9999
    np.testing.assert_allclose(words, their_words, atol=1e-5)


def _grey_levels(ours: torch.Tensor, theirs: torch.Tensor, embedder) -> float:
    std = torch.tensor(embedder.data_config["std"]).view(3, 1, 1)
    return ((ours - theirs).abs() * std * 255).max().item()


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
def test_preprocessing_is_the_models_own_open_clip_transform(tmp_path, resize_mode):
    """CLIP's shortest-side resize + centre crop, SigLIP's squash and the padded longest-side mode: our tensor
    is open_clip's own ``image_transform_v2`` output within one grey level."""
    from lookalike.models.openclip import build_clip, embedder_from, tiny_recipe

    recipe = tiny_recipe()
    recipe = type(recipe)(**{**recipe.__dict__, "preprocess": {**recipe.preprocess, "resize_mode": resize_mode,
                                                               "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}})
    embedder = embedder_from(build_clip(recipe.model_cfg), "t", "t", "random:0", recipe)
    img = load_image(make_image(tmp_path / "a.jpg", size=(300, 420), shape="stripes", quality=95))
    ours, theirs = embedder.tensor(img), embedder.clip_transform(img)
    assert ours.shape == theirs.shape == (3, 64, 64)
    assert _grey_levels(ours, theirs, embedder) < 1.01


@pytest.mark.slow
def test_preprocessing_matches_open_clip_on_a_real_photo(shared_photos, tiny_clip):
    photo = sorted((shared_photos / "images").glob("*.jpg"))[0]
    with Image.open(photo) as im:
        expected = tiny_clip.clip_transform(im.convert("RGB"))
    assert _grey_levels(tiny_clip.tensor(load_image(photo)), expected, tiny_clip) < 1.01
    drafted = tiny_clip.tensor(load_image(photo, draft_size=tiny_clip.draft_size))
    assert drafted.shape == expected.shape and (drafted - expected).abs().mean().item() < 0.05


def test_bf16_keeps_both_towers_close_to_fp32(tiny_clip, tmp_path, native_bf16):
    """On the runtime ``auto`` picks for the CPU: OpenVINO on x86 (bf16 where it has native bf16 units, else
    the bf16 request runs fp32)."""
    paths = [make_image(tmp_path / f"{i}.jpg", color=(40 * i, 120, 220 - 30 * i), shape="ellipse") for i in range(4)]
    fp32 = Encoder(tiny_clip, EncodeOptions(device="cpu", precision="fp32", workers=0))
    bf16 = Encoder(tiny_clip, EncodeOptions(device="cpu", precision="bf16", workers=0))
    assert bf16.runtime == "openvino"
    assert (fp32.encode(paths) * bf16.encode(paths)).sum(axis=1).min() > 0.99
    texts = ["a red dress", "blue jeans", "white sneakers"]
    assert (fp32.encode_text(texts) * bf16.encode_text(texts)).sum(axis=1).min() > 0.99


@pytest.mark.parametrize("native_bf16", [False], ids=["no-bf16-cpu"], indirect=True)
def test_photos_go_through_the_decoding_workers_like_any_model(tiny_clip, tmp_path, native_bf16):
    """Indexing a folder uses the same workers (here two forked ones embedding in bf16 on PyTorch) and gives the
    vectors that encoding one photo at a time gives."""
    from lookalike import Catalog

    folder = tmp_path / "photos"
    for i in range(10):
        make_image(folder / f"{i}.jpg", color=(25 * i, 200 - 15 * i, 90), shape="ellipse" if i % 2 else "rect")
    options = EncodeOptions(device="cpu", runtime="torch", precision="bf16", workers=2, batch_size=4, progress=False)
    with Catalog.create(tmp_path / "c.lk", TINY_CLIP, embedder=tiny_clip) as catalog:
        report = catalog.add(folder, options=options)
        assert report.indexed == 10 and report.failed == 0
        one = Encoder(tiny_clip, EncodeOptions(device="cpu", runtime="torch", precision="bf16", workers=0))
        for item in ("0", "7"):
            assert float(np.dot(catalog.vector(item), one.encode(folder / f"{item}.jpg"))) > 0.999
        assert catalog.config.embedder.text


def test_local_weights_file_and_seeded_random_weights(tmp_path, hub_cache):
    state = save_clip(tmp_path / "w", seed=5)
    from_file = create_embedder(TINY_CLIP, weights=str(tmp_path / "w" / "open_clip_model.safetensors"))
    assert all(torch.equal(from_file.clip.state_dict()[k], v) for k, v in state.items())
    assert from_file.info.weights.startswith("file:")
    a, b = create_embedder(TINY_CLIP, weights="random"), create_embedder(TINY_CLIP, weights="random")
    assert a.info.weights == "random:0"
    assert all(torch.equal(a.clip.state_dict()[k], v) for k, v in b.clip.state_dict().items())


def test_open_clip_architectures_by_name(tmp_path):
    import open_clip

    from lookalike.models.openclip import TINY_CONFIG

    (tmp_path / "lookalike-tiny-test.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(tmp_path / "lookalike-tiny-test.json")
    emb = create_embedder("open_clip:lookalike-tiny-test", weights="random")
    assert emb.info.timm_name == "open_clip:lookalike-tiny-test" and emb.info.dim == 128
    with pytest.raises(ModelUnavailableError, match="names no pretrained weights.*--weights"):
        create_embedder("open_clip:lookalike-tiny-test")
    with pytest.raises(UnknownModelError, match="unknown open_clip architecture 'ViT-B-99'.*ViT-B-32"):
        create_embedder("open_clip:ViT-B-99/openai")
    with pytest.raises(UnknownModelError, match="no pretrained tag 'nope'; tags: .*laion2b"):
        create_embedder("open_clip:ViT-B-32/nope")


@pytest.mark.parametrize("name, repo", [("fashion-siglip", "Marqo/marqo-fashionSigLIP"),
                                        ("fashion-clip", "Marqo/marqo-fashionCLIP"),
                                        ("clip-vit-b32", "timm/vit_base_patch32_clip_224.openai"),
                                        ("siglip2-base", "timm/ViT-B-16-SigLIP2")])
def test_uncached_models_offline_fail_in_one_line_with_the_fixes(name, repo, hub_cache):
    with pytest.raises(ModelUnavailableError) as caught:
        create_embedder(name)
    message = str(caught.value)
    assert "\n" not in message
    assert name in message and repo in message and "HF_HUB_OFFLINE" in message and "HF_HOME" in message


def test_missing_weights_file_is_one_clear_error(tmp_path, hub_cache):
    with pytest.raises(ModelUnavailableError, match="not found"):
        create_embedder(TINY_CLIP, weights=str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailableError, match=r"tiny-clip.*bad\.pt") as caught:
        create_embedder(TINY_CLIP, weights=str(bad))
    assert "\n" not in str(caught.value)


def test_words_are_refused_by_a_model_without_a_text_tower(tiny_embedder):
    with pytest.raises(NoTextModelError, match="cannot search by words.*clip-vit-b32.*fashion-siglip"):
        Encoder(tiny_embedder, EncodeOptions(device="cpu")).encode_text("red dress")


def _run(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, **env})


@pytest.mark.slow
def test_index_offline_from_hf_home_and_fail_in_one_line_without_it(tmp_path, photo_dir, clip_hub):
    """The hub path as users run it: HF_HOME + HF_HUB_OFFLINE=1 in a fresh process."""
    env = {"HF_HOME": str(clip_hub), "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "lookalike.cli"]
    res = subprocess.run([*cli, "index", str(photo_dir), "--catalog", "c.lk", "--model", TINY_CLIP, "-q"],
                         capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **env}, timeout=300)
    assert res.returncode == 0, res.stderr
    status = json.loads(subprocess.run([*cli, "status", "--catalog", "c.lk", "--json"], capture_output=True,
                                       text=True, cwd=tmp_path, env={**os.environ, **env}, timeout=300).stdout)
    assert status["items"] == 12 and status["embedder"]["text"] is True
    assert status["embedder"]["weights"] == f"hf-hub:{TINY_CLIP_REPO}"
    empty = {"HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([*cli, "index", str(photo_dir), "--catalog", "x.lk", "--model", "fashion-siglip"],
                         capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **empty}, timeout=300)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Marqo/marqo-fashionSigLIP" in lines[0] and "HF_HUB_OFFLINE" in lines[0], res.stderr
    assert not (tmp_path / "x.lk").exists()


TOKENIZER_REPO = "lookalike-test/tiny-tokenizer"
WORDS = ["[PAD]", "[UNK]", "[EOS]", "red", "blue", "dress", "shoes", "floral", "summer", "leather", "black"]


def _write_hf_tokenizer(home: Path) -> None:
    """A word-level tokenizer as a tokenizer repo on the hub holds one: tokenizer.json, tokenizer_config.json, and
    the repo's config.json (timm's repos have one; transformers reads it first)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A [EOS]", special_tokens=[("[EOS]", 2)])
    snapshot = hub_snapshot(home, TOKENIZER_REPO)
    tok.save(str(snapshot / "tokenizer.json"))
    (snapshot / "config.json").write_text(json.dumps({"architecture": "tiny"}))
    (snapshot / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]", "unk_token": "[UNK]",
        "eos_token": "[EOS]", "model_max_length": 16}))


@pytest.mark.slow
def test_a_tokenizer_that_must_be_downloaded_comes_from_the_cache_too(tmp_path):
    """A SigLIP-like model whose config names a Hugging Face tokenizer repo (as Marqo-FashionSigLIP's does):
    the tokenizer is read from the hub cache offline; without it, one line says what is missing."""
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    home = tmp_path / "hf"
    cfg = {"embed_dim": 32, "custom_text": True, "init_logit_bias": -10,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
           "text_cfg": {"context_length": 16, "vocab_size": len(WORDS), "width": 64, "heads": 2, "layers": 1,
                        "hf_tokenizer_name": TOKENIZER_REPO, "no_causal_mask": True, "pool_type": "last",
                        "proj_bias": True}}
    save_clip(hub_snapshot(home, "lookalike-test/tiny-siglip"), seed=1, model_cfg=cfg, preprocess_cfg={
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize_mode": "squash"})
    code = ("import numpy as np\nfrom lookalike.engines.embed import Encoder\nfrom lookalike.models import "
            "create_embedder\nemb = create_embedder('hf-hub:lookalike-test/tiny-siglip')\n"
            "v = Encoder(emb).encode_text(['red floral dress', 'black leather shoes'])\n"
            "print(type(emb.tokenizer).__name__, v.shape, emb.logit_bias, emb.tokenize(['red dress'])[0, :4].tolist())")
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    missing = _run(code, env, tmp_path)
    assert missing.returncode != 0
    last = missing.stderr.strip().splitlines()[-1]
    assert "tokenizer" in last and TOKENIZER_REPO in last and "HF_HUB_OFFLINE" in last, missing.stderr
    _write_hf_tokenizer(home)
    res = _run(code, env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[:3] == ["HFTokenizer", "(2,", "32)"]
    assert res.stdout.strip().endswith("[3, 5, 2, 0]")  # red dress [EOS] [PAD]
