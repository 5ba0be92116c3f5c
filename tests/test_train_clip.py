"""`lookalike train clip`: contrastive fine-tuning of a text+image model on (photo, text) pairs, a .lkm that is
a text+image embedder everywhere, and the end-to-end check on the shared shop photos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike.core.config import EncodeOptions
from lookalike.core.errors import TrainingError
from lookalike.train.clip import ClipTrainConfig, base_model, contrastive_loss, train_clip
from lookalike.train.common import TrainOptions

OPTIONS = EncodeOptions(device="cpu", precision="fp32", workers=0, progress=False)


@pytest.fixture(scope="module")
def shop_pack(shop, tmp_path_factory) -> Path:
    from lookalike.train.pack import pack_source

    out = tmp_path_factory.mktemp("clip-pack") / "shop.pack"
    pack_source(shop / "styles.csv", out, size=64, images=shop / "photos", workers=0)
    return out


@pytest.fixture(scope="module")
def trained(shop_pack, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clip-model") / "shop-clip.lkm"
    train_clip(shop_pack, out, base="tiny", config=ClipTrainConfig(text_columns=("name", "colour"), type_label="shape"),
               options=TrainOptions(epochs=2, batch_size=4, lr=1e-3, val_fraction=0.34, patience=0, seed=1))
    return out


@pytest.mark.slow  # several seconds: runs in .ci/run, not in the quick suite
def test_the_model_file_is_a_text_and_image_embedder(trained, shop):
    from lookalike.models import create_embedder
    from lookalike.models.modelfile import read_meta

    meta = read_meta(trained)
    assert meta.kind == "clip" and meta.preprocess["resize"] == "letterbox" and meta.preprocess["size"] == 64
    assert meta.training["metrics"]["before"]["photos"] == 4 and "t2i_recall@10" in meta.training["metrics"]["after"]
    assert meta.training["loss"] == "clip" and meta.training["config"]["text_columns"] == ["name", "colour"]
    emb = create_embedder(str(trained))
    assert emb.info.text and emb.info.weights.startswith("file:") and emb.dim == 128
    from lookalike.engines.embed import Encoder
    from lookalike.models.letterbox import Letterbox

    encoder = Encoder(emb, OPTIONS)
    photo = shop / "photos" / "red-rect.jpg"
    from PIL import Image

    with Image.open(photo) as im:
        x = torch.from_numpy(np.asarray(Letterbox(64)(im.convert("RGB"))).copy())[None]
    with torch.no_grad():
        theirs = emb.clip.encode_image(emb.normalize(x), normalize=True)[0].numpy()
    assert float(np.dot(encoder.encode(photo), theirs)) > 0.9999
    words = encoder.encode_text(["red rect thing", "blue"])
    assert words.shape == (2, 128)


@pytest.mark.slow  # trains a model first: runs in .ci/run, not in the quick suite
def test_a_trained_model_indexes_searches_by_words_and_tags(trained, shop, tmp_path):
    from lookalike import Catalog
    from lookalike.analysis.tag import tag_catalog

    with Catalog.create(tmp_path / "c.lk", str(trained)) as catalog:
        catalog.add(shop / "styles.csv", images=shop / "photos", options=OPTIONS)
        assert catalog.config.embedder.text and len(catalog) == 12
        found = catalog.search(text="red rect thing", k=3)
        assert len(found) == 3
        report = tag_catalog(catalog, "kind", ["rect", "ellipse", "stripes"], against="shape")
        assert report.items == 12 and report.evaluation.items == 12
    with Catalog.open(tmp_path / "c.lk") as again:  # reopened from the file's path, as any .lkm
        assert len(again.search(text="green", k=2)) == 2


@pytest.mark.slow  # trains twice: runs in .ci/run, not in the quick suite
def test_training_is_repeatable_with_a_seed(shop_pack, tmp_path):
    from safetensors.torch import load_file

    options = TrainOptions(epochs=1, batch_size=4, lr=1e-3, val_fraction=0.34, patience=0, seed=3)
    config = ClipTrainConfig(text_columns=("name",))
    for name in ("a.lkm", "b.lkm"):
        train_clip(shop_pack, tmp_path / name, base="tiny", config=config, options=options)
    a, b = load_file(str(tmp_path / "a.lkm")), load_file(str(tmp_path / "b.lkm"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_contrastive_loss_rewards_alignment_and_spreads_equal_captions():
    eye = torch.eye(4)
    same = torch.eye(4, dtype=torch.bool)
    aligned = contrastive_loss(eye, eye, same, torch.tensor(10.0), None)
    shuffled = contrastive_loss(eye, eye[[1, 2, 3, 0]], same, torch.tensor(10.0), None)
    assert aligned < shuffled
    # Photos 0 and 1 carry the same caption: text 1 is as right for photo 0 as text 0 is, so a step of the
    # loss moves photo 0 towards text 1; one-hot targets would push it away.
    both = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    txt = torch.tensor([[1.0, 0, 0, 0], [0.8, 0.6, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    moves = []
    for targets in (both, same):
        img = txt.clone().requires_grad_(True)
        contrastive_loss(img, txt, targets, torch.tensor(10.0), None).backward()
        moves.append(float(-img.grad[0] @ (txt[1] - txt[0])))
    assert moves[0] > 0 > moves[1]
    siglip = contrastive_loss(eye, eye, same, torch.tensor(10.0), torch.tensor(-5.0))
    assert siglip < contrastive_loss(eye, eye[[1, 2, 3, 0]], same, torch.tensor(10.0), torch.tensor(-5.0))


def test_bad_training_requests_fail_clearly(shop_pack, tmp_path):
    with pytest.raises(TrainingError, match="no text column 'title'"):
        train_clip(shop_pack, tmp_path / "x.lkm", config=ClipTrainConfig(text_columns=("title",)))
    with pytest.raises(TrainingError, match="embeds photos only.*tiny"):
        base_model("pixels")
    assert not (tmp_path / "x.lkm").exists()


@pytest.mark.slow
def test_train_clip_from_the_command_line(shop, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "lookalike.cli", "train", "clip", str(shop / "styles.csv"), "--images",
                          str(shop / "photos"), "--text-column", "name", "--base", "tiny", "--epochs", "2",
                          "--batch-size", "4", "--val", "0.34", "--type-label", "shape", "--out", "m.lkm", "-q"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "text->image recall@10" in res.stdout and "shape name as query" in res.stdout
    assert (tmp_path / "m.lkm").is_file() and (tmp_path / "m-figures" / "loss.png").is_file()
    bad = subprocess.run([sys.executable, "-m", "lookalike.cli", "train", "clip", str(shop / "styles.csv"), "--images",
                          str(shop / "photos"), "--text-column", "name", "--base", "resnet50", "--weights", "random",
                          "--out", "r.lkm"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "text+image" in bad.stderr


@pytest.mark.slow
def test_a_small_clip_trained_on_the_shop_photos_finds_article_types_by_name(shared_photos, tmp_path):
    """The whole text path, failing if any part is broken: a tiny random CLIP trained a few epochs on the shared
    photos' titles and article types, then a catalog of those photos searched by each article type's name
    ranks items of that type above chance (precision@10, over the 95% interval of the chance row)."""
    from lookalike import Catalog
    from lookalike.analysis.words import TEXT_LABEL, evaluate_words
    from lookalike.train.pack import pack_source

    pack = tmp_path / "shop.pack"
    pack_source(shared_photos / "styles.csv", pack, size=64, images=shared_photos / "images", workers=2)
    result = train_clip(pack, tmp_path / "shop-clip.lkm", base="tiny",
                        config=ClipTrainConfig(text_columns=("productDisplayName", "articleType"),
                                               type_label="articleType"),
                        options=TrainOptions(epochs=TRAIN_EPOCHS, batch_size=32, lr=1e-3, patience=8, seed=0))
    after, before = result.metrics["after"], result.metrics["before"]
    assert after["t2i_recall@10"] > after["chance_t2i_recall@10"]
    with Catalog.create(tmp_path / "shop.lk", str(tmp_path / "shop-clip.lkm")) as catalog:
        catalog.add(shared_photos / "styles.csv", images=shared_photos / "images", options=OPTIONS)
        ours, chance = evaluate_words(catalog, TEXT_LABEL, "articleType", k=10, template="{}", bootstrap=500)
    print(json.dumps({"before": before, "after": after, "catalog_precision@10": ours.metrics["precision"].value,
                      "chance_precision@10": chance.metrics["precision"].value}))
    assert ours.metrics["precision"].value > chance.metrics["precision"].high


TRAIN_EPOCHS = 40
