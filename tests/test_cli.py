"""The `lookalike` command as users run it: subprocesses, exit codes, tables and JSON, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_MODEL, make_image
from lookalike import Catalog, EncodeOptions

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "lookalike.cli", *args], capture_output=True, text=True,
                         cwd=cwd, env=ENV, timeout=300)
    if check:
        assert res.returncode == 0, res.stderr
    return res


@pytest.mark.slow
def test_index_search_similar_status_from_the_command_line(tmp_path, photo_dir):
    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage")
    index = run("index", str(photo_dir), "--catalog", "shop.lk", "--model", TINY_MODEL, "--weights", "random",
                "--workers", "1", cwd=tmp_path)
    assert "indexed 12" in index.stdout and "failed 1" in index.stdout and "lookalike status" in index.stdout
    found = json.loads(run("search", str(photo_dir / "red-rect.jpg"), "--catalog", "shop.lk", "-k", "3",
                           "--json", cwd=tmp_path).stdout)
    assert [set(m) >= {"id", "path", "distance", "similarity", "labels"} for m in found] == [True] * 3
    assert found[0]["id"] == "red-rect"
    similar = run("similar", "red-rect", "--catalog", "shop.lk", "-k", "4", cwd=tmp_path)
    assert "similarity" in similar.stdout and "red-rect.jpg" not in similar.stdout
    assert len([ln for ln in similar.stdout.splitlines() if ".jpg" in ln]) == 4
    status = json.loads(run("status", "--catalog", "shop.lk", "--json", cwd=tmp_path).stdout)
    assert status["items"] == 12 and status["failed"] == 1
    assert status["failures"][0]["id"] == "broken" and status["failures"][0]["reason"]
    table = run("status", "--catalog", "shop.lk", cwd=tmp_path).stdout
    assert "broken" in table and "12 searchable, 1 failed" in table


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["similar", "nope", "--catalog", "shop.lk"], "unknown item id 'nope'"),
    (["similar", "red-rect", "--catalog", "missing.lk"], "no catalog here"),
    (["similar", "red-rect", "--catalog", "shop.lk", "--where", "size"], "label=value"),
    (["search", "no-such.jpg", "--catalog", "shop.lk"], "no-such.jpg: file not found"),
    (["index", "no-such-folder", "--catalog", "shop.lk"], "no such folder or manifest"),
    (["index", ".", "--catalog", "shop.lk", "--model", "resnet50"], "cannot add resnet50 vectors"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, photo_dir, tiny_embedder, args, message):
    with Catalog.create(tmp_path / "shop.lk", TINY_MODEL, embedder=tiny_embedder) as cat:
        cat.add(photo_dir / "shoes")
    res = run(*args, cwd=tmp_path, check=False)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_the_console_script_keeps_the_exit_code_and_skips_the_last_collections(tmp_path):
    """``lookalike`` (``cli.run``) exits with ``main``'s code, still runs atexit handlers, and has frozen
    the heap before the interpreter's final collections (what makes a PyTorch command end 1 s sooner)."""
    script = ("import atexit, gc, sys\n"
              "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0, flush=True))\n"
              "from lookalike.cli import run\n"
              "sys.argv = ['lookalike'] + sys.argv[1:]\n"
              "run()\n")
    ok = subprocess.run([sys.executable, "-c", script, "models"], capture_output=True, text=True, cwd=tmp_path,
                        env=ENV, timeout=120)
    assert ok.returncode == 0 and "resnet50" in ok.stdout and "frozen True" in ok.stdout
    refused = subprocess.run([sys.executable, "-c", script, "status", "--catalog", "missing.lk"],
                             capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=120)
    assert refused.returncode == 2 and "no catalog here" in refused.stderr and "frozen True" in refused.stdout


def test_every_command_has_help():
    from lookalike.cli import build_parser

    parser = build_parser()
    commands = ("index", "tune", "search", "similar", "status", "models", "demo", "serve", "evaluate", "cluster",
                "duplicates", "recommend", "plot", "report", "pack", "train", "classify")
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0


@pytest.mark.slow
def test_demo_works_offline_on_the_builtin_model_and_says_what_to_do_next(tmp_path):
    res = run("demo", "--catalog", "demo.lk", cwd=tmp_path)
    first = res.stdout.splitlines()[0]
    assert first.startswith("Building a demo catalog at demo.lk") and "mobilenetv2" in first  # before the model
    assert "note:" not in res.stdout  # nothing fell back: the built-in model needs no download
    assert "model: mobilenetv2 (mobilenetv2_100.coral_in1k, weights builtin:" in res.stdout
    assert res.stdout.count("more like") == 3
    next_steps = res.stdout.split("Next:")[1]
    for command in ("lookalike serve --catalog demo.lk", "lookalike plot grid --catalog demo.lk",
                    "lookalike plot map --catalog demo.lk", "lookalike similar", "lookalike search"):
        assert command in next_steps
    assert "indexed 46" in res.stdout
    again = run("demo", "--catalog", "demo.lk", cwd=tmp_path)
    assert "indexed 0, unchanged 46" in again.stdout


@pytest.mark.slow
def test_a_demo_model_that_cannot_be_had_falls_back_to_the_builtin_one(tmp_path):
    res = run("demo", "--catalog", "demo.lk", "--model", "resnet50", cwd=tmp_path)
    assert "note: cannot load weights for resnet50" in res.stdout
    assert "the demo uses mobilenetv2 instead, the model built into lookalike" in res.stdout
    assert "model: mobilenetv2" in res.stdout and res.stdout.count("more like") == 3


def test_the_offline_demo_gives_real_look_alikes(tmp_path):
    """The built-in model's answers on the shipped photos: a T-shirt's and a sneaker's five look-alikes are
    mostly of their kind (with model-free pixels, a cricket jersey's were a backpack, a cap, a top...)."""
    from lookalike.catalog.demo import run_demo

    result = run_demo(tmp_path / "demo.lk", options=EncodeOptions(workers=0, progress=False))
    with result.catalog as catalog:
        assert result.fallback is None and catalog.config.embedder.name == "mobilenetv2"
        footwear = {"Casual Shoes", "Sports Shoes", "Formal Shoes", "Heels", "Flats", "Sandals", "Flip Flops"}
        kinds_of = {i: labels.get("articleType") for i, labels, _ in result.examples}
        assert "Tshirts" in kinds_of.values() and footwear & set(kinds_of.values())
        for item_id, kind in kinds_of.items():
            if kind != "Tshirts" and kind not in footwear:
                continue
            kinds = [m.labels.get("articleType") for m in catalog.similar(item_id, k=5)]
            same = sum(k in footwear for k in kinds) if kind in footwear else kinds.count(kind)
            assert same >= 3, (item_id, kind, kinds)


def _committed(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("workers, runtime", [("0", "torch"), ("2", "torch"), ("2", "openvino")],
                         ids=["inline", "embedding workers", "openvino decoding threads"])
def test_killed_index_run_leaves_a_working_catalog_and_the_rerun_resumes(tmp_path, workers, runtime):
    photos = tmp_path / "many"
    total = 240
    for n in range(total):
        make_image(photos / f"p{n:03d}.jpg", color=(n % 256, (7 * n) % 256, (13 * n) % 256),
                   size=(640, 480), shape=["rect", "ellipse", "stripes"][n % 3], quality=90)
    args = [sys.executable, "-m", "lookalike.cli", "index", str(photos), "--catalog", "k.lk", "--model", TINY_MODEL,
            "--weights", "random", "--batch-size", "2", "--workers", workers, "--precision", "bf16", "-q",
            "--runtime", runtime]
    proc = subprocess.Popen(args, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = tmp_path / "k.lk" / "catalog.sqlite"
    deadline = time.time() + 240
    while _committed(db) < 20 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    children = _children(proc.pid)
    assert len(children) == (int(workers) if runtime == "torch" else 0)  # OpenVINO decodes in threads
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _committed(db)
    assert 0 < done < total, f"kill landed outside the run ({done} of {total} committed)"
    deadline = time.time() + 30  # orphaned workers notice their parent is gone and stop using the cores
    while any(_alive(pid) for pid in children) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in children)

    with Catalog.open(tmp_path / "k.lk") as cat:  # opens, and its index is rebuilt from what was committed
        assert len(cat) == done
        first = cat.ids()[0]
        assert len(cat.similar(first, k=5)) == 5

    rerun = run("index", str(photos), "--catalog", "k.lk", "--json", "-q", cwd=tmp_path)
    report = json.loads(rerun.stdout)
    assert report["indexed"] == total - done
    assert report["unchanged"] == done
    with Catalog.open(tmp_path / "k.lk") as cat:
        assert len(cat) == total


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the parent pid
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
