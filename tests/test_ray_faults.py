"""Faults on the Ray engine, with real processes: the driver killed mid-run, and a worker node of a two-node
``ray start`` cluster (both nodes on this machine) killed mid-run.

Every Ray process here is started by the test in a process group of its own and ended by that group's id,
never by name: other Ray clusters on the machine are left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TINY_MODEL, make_image
from lookalike import Catalog, EncodeOptions

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

RAY = str(Path(sys.executable).with_name("ray"))
# A test cluster on this machine's loopback: no token to hand around between the nodes and the driver.
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def photos(root: Path, n: int) -> Path:
    folder = root / "photos"
    for i in range(n):
        make_image(folder / f"p{i:03d}.jpg", color=(i % 256, 255 - i % 256, (7 * i) % 256),
                   shape=("rect", "ellipse", "stripes")[i % 3], quality=90)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    return folder


def committed(catalog: Path) -> int:
    """Items committed so far, read the way a second process would (the store is WAL SQLite)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{catalog / 'catalog.sqlite'}?mode=ro", uri=True,
                                                timeout=5)) as db:
            return db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    except sqlite3.Error:
        return 0


def index_command(source: Path, catalog: Path, *extra: str, model: str = TINY_MODEL, batch: int = 2) -> list[str]:
    return [sys.executable, "-m", "lookalike.cli", "index", str(source), "--catalog", str(catalog), "--model",
            model, "--weights", "random", "--engine", "ray", "--batch-size", str(batch), "-q", "--json", *extra]


def end_group(proc: subprocess.Popen, grace: float = 40.0) -> None:
    """End a process group this test started (SIGTERM, then SIGKILL after ``grace`` seconds)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended first ({proc.returncode})")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)


def test_a_killed_driver_leaves_a_catalog_that_opens_and_the_next_run_resumes(tmp_path, tiny_embedder):
    folder = photos(tmp_path, 150)
    catalog = tmp_path / "shop.lk"
    driver = subprocess.Popen(index_command(folder, catalog, "--actors", "1"), env=ENV, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: committed(catalog) >= 6, 300, "first batches committed", driver)
        os.kill(driver.pid, signal.SIGKILL)  # the driver only; the local Ray it started goes with its group
        driver.wait(30)
    finally:
        end_group(driver, grace=5)
    done = committed(catalog)
    assert 6 <= done < 151
    with Catalog.open(catalog, embedder=tiny_embedder) as cat:
        assert cat.store.counts()["ok"] + cat.store.counts().get("failed", 0) == done
        if cat.store.counts()["ok"]:
            some = next(iter(cat.table.key_by_id))
            assert cat.similar(some, k=3)  # it opens and answers
        ok_before = cat.store.counts()["ok"]
        report = cat.add(folder, options=EncodeOptions(workers=0, progress=False))  # the next run, local
    assert report.unchanged == ok_before  # nothing committed is embedded again
    assert report.indexed == 150 - ok_before
    assert report.indexed + report.unchanged == 150 and report.failed + report.failed_before == 1


@contextlib.contextmanager
def two_node_cluster(root: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A head node (1 CPU) and a second node (1 CPU, resource ``node2``) on this machine, each a ``ray start
    --block`` in its own process group; yields the head's address and the second node's process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="lkray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
    head = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--temp-dir", temp,
                             "--include-dashboard", "false", *common], env=ENV, start_new_session=True,
                            stdout=open(root / "head.log", "w"), stderr=subprocess.STDOUT)
    node2 = None
    try:
        wait_for(lambda: _nodes(address) >= 1, 180, "head node up", head)
        node2 = subprocess.Popen([RAY, "start", "--address", address, "--resources", json.dumps({"node2": 1}),
                                  *common], env=ENV, start_new_session=True,
                                 stdout=open(root / "node2.log", "w"), stderr=subprocess.STDOUT)
        wait_for(lambda: _nodes(address) >= 2, 180, "second node up", node2)
        yield address, node2
    finally:
        if node2 is not None:
            end_group(node2, grace=5)
        end_group(head)
        subprocess.run(["rm", "-rf", temp], check=False)


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, command line) of every process visible in /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[int(entry.name)] = (int(fields[1]), int(fields[2]), cmd)
    return out


def actor_on(node: subprocess.Popen) -> bool:
    """Does the node started as ``node`` (its raylet is in that process group) run an embedding actor?"""
    procs = _processes()
    raylets = {pid for pid, (_, group, cmd) in procs.items() if group == node.pid and "raylet" in cmd}
    return any(parent in raylets and "EmbedActor" in cmd for parent, _, cmd in procs.values())


def _nodes(address: str) -> int:
    res = subprocess.run([RAY, "status", "--address", address], env=ENV, capture_output=True, text=True, timeout=60)
    if res.returncode != 0 or "Active:" not in res.stdout:
        return 0
    active = res.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
    return active.count("node_")


def test_a_worker_node_killed_mid_run_costs_only_its_batches(tmp_path):
    """Two actors spread over the two nodes; the second node is killed (SIGKILL to all its processes) after
    the first commits. Ray moves its actor to the head and re-runs what was lost; the catalog ends complete."""
    folder = photos(tmp_path, 120)
    catalog = tmp_path / "shop.lk"
    with two_node_cluster(tmp_path) as (address, node2):
        # Sized so the head alone can carry the whole pipeline once the second node is gone; ResNet-50 (random
        # weights) so that embedding outlasts the second node's first batches.
        driver = subprocess.Popen(index_command(folder, catalog, "--ray-address", address, "--actors", "2",
                                                "--cpus-per-actor", "0.25", "--decode-cpus", "0.5", "-v",
                                                model="resnet50", batch=8),
                                  env=ENV, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        err_lines: list[str] = []
        reader = threading.Thread(target=lambda: err_lines.extend(iter(driver.stderr.readline, "")), daemon=True)
        reader.start()
        try:
            # The driver's progress line names the nodes whose actors have delivered vectors.
            wait_for(lambda: any("actors on 2 nodes" in line for line in err_lines), 300,
                     "vectors from both nodes", driver)
            assert committed(catalog) < 121  # mid-run
            os.killpg(node2.pid, signal.SIGKILL)  # the whole second node, as if its machine went away
            out = driver.stdout.read()
            driver.wait(480)
            reader.join(30)
        finally:
            if driver.poll() is None:
                end_group(driver, grace=5)
    err = "".join(err_lines)
    assert driver.returncode == 0, err[-3000:]
    report = json.loads(out)
    assert (report["indexed"], report["failed"]) == (120, 1)
    assert report["engine"] == "ray" and report["engine_detail"]["nodes_in_cluster"] == 2
    assert report["engine_detail"]["nodes_used"] == 2, report["engine_detail"]  # actors ran on both nodes
    with Catalog.open(catalog) as cat:
        assert len(cat) == 120 and cat.store.counts()["failed"] == 1


RAY_CHATTER = """
import json, logging, time
import ray
from lookalike.engines.ray_engine import RayOptions, ray_session

logging.basicConfig(level=logging.INFO)  # -v: Ray forwards the workers' output to this driver

with ray_session(RayOptions(actors=1)):
    @ray.remote(num_cpus=0.1)
    def shout(i):
        print("chatter from a worker", flush=True)
        return i

    assert ray.get([shout.remote(i) for i in range(12)]) == list(range(12))
    time.sleep(3)  # the log monitor forwards the lines; Ray holds the repeats back until shutdown flushes them
print(json.dumps({"report": True}))
"""


def test_what_ray_prints_in_a_run_never_reaches_stdout(tmp_path):
    """A command's stdout is its report (``--json``). Ray's driver prints forwarded worker output and cluster
    messages (a retried task, a lost node) to stdout from threads of its own, and ``ray.shutdown()`` flushes the
    repeats it held back there too: within ``ray_session`` all of it goes to stderr, and stdout stays one report."""
    res = subprocess.run([sys.executable, "-c", RAY_CHATTER], env=ENV, cwd=tmp_path, capture_output=True,
                         text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout) == {"report": True}, res.stdout[:2000]
    assert "chatter from a worker" in res.stderr
