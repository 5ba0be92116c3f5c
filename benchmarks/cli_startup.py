"""Start-up cost of light commands: wall time and peak memory of ``lookalike --help``, ``status`` and
``similar ID --json`` on a ``--model pixels`` catalog of the shared photos, each in a fresh interpreter.

The baseline is an older checkout of lookalike run in the same session on the same catalog (``--baseline-src``,
e.g. a ``git worktree add /tmp/before 866be5d`` of the last commit before the layered layout), so the ratio
compares code, not machines. Peak memory is the child's maximum resident set (``os.wait4``, as
``/usr/bin/time -v`` reports it). Targets (issue 12): under 0.5 s and 250 MB for ``--help`` and ``status``,
under 1 s and 400 MB for ``similar``.

``--network`` adds ``search PHOTO`` on a ``resnet50`` catalog (random weights) and on a built-in ``mobilenetv2``
catalog (real weights), 16 photos each, with the default runtime. Where that is OpenVINO (x86 CPUs) and the
converted model is cached (indexing made it), the search replays the recorded preprocessing and loads no
PyTorch or timm (issue 26: target under 1 s and 400 MB); elsewhere it loads PyTorch, timm and the model.

    python benchmarks/cli_startup.py --baseline-src /tmp/before/src
    python benchmarks/cli_startup.py --network --baseline-src /tmp/head/src   # e.g. the commit before a change
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe_machine  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-products"
OURS = Path(__file__).resolve().parents[1] / "src"
TARGETS = {"--help": (0.5, 250), "status": (0.5, 250), "similar": (1.0, 400),  # seconds, MB
           "search r50": (1.0, 400), "search mnv2": (1.0, 400)}
NETWORK_MODELS = {"r50": ["--model", "resnet50", "--weights", "random"], "mnv2": ["--model", "mobilenetv2"]}
NETWORK_PHOTOS = 16


def run_once(src: Path, args: list[str], cwd: Path) -> tuple[float, float, float]:
    """Wall seconds, peak RSS in MB and CPU seconds (user + system, steadier than wall time on a busy
    machine) of ``lookalike ARGS`` with ``src`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"lookalike {' '.join(args)} failed under {src}: {proc.stderr.read().decode()[-500:]}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=SHARED, help="folder with styles.csv and images/")
    ap.add_argument("--baseline-src", type=Path, help="src/ folder of an older lookalike checkout to compare with")
    ap.add_argument("--runs", type=int, default=5, help="runs per command and version (median wall, max memory)")
    ap.add_argument("--network", action="store_true",
                    help=f"also time `search PHOTO` on resnet50 and mobilenetv2 catalogs of {NETWORK_PHOTOS} photos")
    args = ap.parse_args()
    print(describe_machine(), flush=True)  # which CPU: they differ between machines
    work = Path(tempfile.mkdtemp(prefix="cli-startup-"))
    versions = {"ours": OURS, **({"baseline": args.baseline_src} if args.baseline_src else {})}
    catalogs = {}
    for version, src in versions.items():  # each version indexes its own copy (catalog.json gained fields)
        catalogs[version] = work / f"{version}.lk"
        subprocess.run([sys.executable, "-m", "lookalike.cli", "index", str(args.photos / "styles.csv"), "--images",
                        str(args.photos / "images"), "--catalog", str(catalogs[version]), "--model", "pixels", "-q"],
                       check=True, env={**os.environ, "PYTHONPATH": str(src)})
    photos = sorted((args.photos / "images").glob("*.jpg"))
    photo = photos[0]
    if args.network:
        few = work / "few"
        few.mkdir()
        for path in photos[:NETWORK_PHOTOS]:
            shutil.copyfile(path, few / path.name)
        for version, src in versions.items():
            for short, model in NETWORK_MODELS.items():
                subprocess.run([sys.executable, "-m", "lookalike.cli", "index", str(few), "--catalog",
                                str(work / f"{version}-{short}.lk"), *model, "-q"],
                               check=True, env={**os.environ, "PYTHONPATH": str(src)})
    sys.path.insert(0, str(OURS))
    from lookalike.catalog.catalog import Catalog

    with Catalog.open(catalogs["ours"]) as opened:
        item, size = sorted(opened.ids())[0], len(opened)
    print(f"catalog: {size} items, --model pixels, in {work}")

    def commands(catalog: Path) -> dict[str, list[str]]:
        out = {"--help": ["--help"], "status": ["status", "--catalog", str(catalog)],
               "similar": ["similar", item, "--catalog", str(catalog), "--json"]}
        if args.network:
            for short in NETWORK_MODELS:
                out[f"search {short}"] = ["search", str(photo), "--catalog",
                                          str(catalog.with_name(f"{catalog.stem}-{short}.lk")), "--json"]
        return out

    rows = {}
    for name in commands(work):
        for version, src in versions.items():
            cmd = commands(catalogs[version])[name]
            run_once(src, cmd, work)  # warm the page cache
            results = [run_once(src, cmd, work) for _ in range(args.runs)]
            rows[name, version] = (statistics.median(r[0] for r in results), max(r[1] for r in results),
                                   statistics.median(r[2] for r in results))
    print(f"\n{'command':12} {'ours s':>8} {'cpu s':>6} {'ours MB':>8}" + (
        f" {'base s':>8} {'cpu s':>6} {'base MB':>8} {'speed-up':>9} {'memory':>7}" if args.baseline_src else "")
        + "  target (wall, memory)")
    for name in commands(work):
        wall, mem, cpu = rows[name, "ours"]
        line = f"{name:12} {wall:8.2f} {cpu:6.2f} {mem:8.0f}"
        if args.baseline_src:
            bwall, bmem, bcpu = rows[name, "baseline"]
            line += f" {bwall:8.2f} {bcpu:6.2f} {bmem:8.0f} {bwall / wall:8.1f}x {bmem / mem:6.1f}x"
        if name not in TARGETS:
            print(line + "  (no target)")
            continue
        limit_s, limit_mb = TARGETS[name]
        ok = wall < limit_s and mem < limit_mb
        print(line + f"  <{limit_s} s, <{limit_mb} MB: {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
