"""The house stays as drawn in docs/architecture.md: no import cycles, imports only point down the layers,
no module borrows another's private names, and light commands start without the heavy libraries."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_image

SRC = Path(__file__).resolve().parents[1] / "src" / "lookalike"
CYCLES_TOOL = Path(__file__).resolve().parents[2] / "shared" / "tools" / "import_cycles.py"

# Lowest first; a module may import from its own layer or any layer below (docs/architecture.md).
LAYERS = {
    "core": 0, "models": 1, "engines": 2, "store": 3, "index": 3, "catalog": 4, "analysis": 5, "figures": 6,
    "train": 7, "cli": 8, "api": 8, "": 8,  # "": the package itself (lookalike/__init__.py, the public facade)
}
HEAVY = ("torch", "torchvision", "timm", "matplotlib", "fastapi", "uvicorn", "starlette", "openvino", "nncf", "ray")


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


@functools.cache
def _parsed(path: Path) -> ast.Module:
    """Each module parsed once for the tests of this file that read them all."""
    return ast.parse(path.read_text(encoding="utf-8"))


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import outside ``if TYPE_CHECKING:``."""
    tree = _parsed(path)
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for b in node.body for n in ast.walk(b)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("lookalike")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            if stem.startswith("lookalike"):
                names = [a.name for a in node.names]
                submodules = [f"{stem}.{n}" for n in names if f"{stem}.{n}" in known]
                found += [(m, [], node.lineno) for m in submodules]
                found.append((stem, [n for n in names if f"{stem}.{n}" not in known], node.lineno))
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_there_are_no_import_cycles():
    if not CYCLES_TOOL.is_file():
        pytest.skip("../shared/tools/import_cycles.py is not beside the project")
    res = subprocess.run([sys.executable, str(CYCLES_TOOL), str(SRC)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("no import cycles")


def test_every_module_belongs_to_a_layer():
    assert {_layer(m) for m in _modules()} - {"web"} <= set(LAYERS)


def test_imports_only_point_down():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        for target, _, line in _imports(name, path, set(modules)):
            if LAYERS[_layer(target)] > LAYERS[_layer(name)]:
                wrong.append(f"{path.relative_to(SRC.parent)}:{line}: {name} ({_layer(name) or 'lookalike'}) imports "
                             f"{target} ({_layer(target)}), a higher layer")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_another_modules_private_names():
    modules = _modules()
    wrong = [f"{path.relative_to(SRC.parent)}:{line}: {name} imports {', '.join(private)} from {target}"
             for name, path in modules.items() for target, names, line in _imports(name, path, set(modules))
             if target != name and (private := [n for n in names if n.startswith("_") and not n.startswith("__")])]
    assert not wrong, "\n".join(wrong)


def test_the_cpu_is_probed_in_one_place_and_every_caller_asks_it_there():
    """``core/cpu.py`` alone reads the CPU's features, and callers look them up through the module
    (``cpu.has_native_bf16()``): a copy of the probe, or its name imported elsewhere, is a second name that a test
    pinning the CPU does not replace (issue 24: a copy in ``engines/embed.py`` made an int8 test fail on AVX2)."""
    modules = _modules()
    probe = "lookalike.core.cpu"
    wrong = []
    for name, path in modules.items():
        text = path.read_text(encoding="utf-8")
        if name != probe:
            wrong += [f"{path.relative_to(SRC.parent)}: reads {what} itself; call {probe} instead"
                      for what in ("/proc/cpuinfo", "avx512", "amx_bf16", "platform.machine", "sysctl")
                      if what in text]
        wrong += [f"{path.relative_to(SRC.parent)}:{line}: imports {', '.join(names)} from {probe}; import the module "
                  "and call cpu.NAME()" for target, names, line in _imports(name, path, set(modules))
                  if target == probe and names]
    assert probe in modules and not wrong, "\n".join(wrong)


def _run_counting_imports(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``lookalike ARGS`` in a fresh interpreter; return the result and which heavy libraries it loaded."""
    code = ("import atexit, json, sys\n"
            f"atexit.register(lambda: print('LOADED=' + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)),"
            " file=sys.stderr))\n"
            "from lookalike.cli import main\n"
            f"sys.exit(main({args!r}))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)
    marker = [line for line in res.stderr.splitlines() if line.startswith("LOADED=")]
    assert marker, res.stderr
    return res, json.loads(marker[-1].removeprefix("LOADED="))


@pytest.fixture(scope="module")
def pixels_catalog(tmp_path_factory) -> Path:
    """A model-free catalog (``pixels``) of twelve labelled photos, built from the command line."""
    root = tmp_path_factory.mktemp("light")
    rows = ["path,colour,shape"]
    for colour, rgb in {"red": (200, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 200)}.items():
        for shape in ("rect", "ellipse", "stripes", "rect2"):
            make_image(root / "photos" / f"{colour}-{shape}.jpg", color=rgb, shape=shape.rstrip("2"),
                       size=(96, 120 if shape == "rect2" else 128))
            rows.append(f"{colour}-{shape}.jpg,{colour},{shape.rstrip('2')}")
    (root / "photos" / "labels.csv").write_text("\n".join(rows) + "\n")
    res, loaded = _run_counting_imports(["index", "photos/labels.csv", "--catalog", "shop.lk", "--model", "pixels",
                                         "-q"], root)
    assert res.returncode == 0, res.stderr
    assert loaded == [], f"index with --model pixels loaded {loaded}"
    return root


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["--help"], ["status", "--help"], ["similar", "--help"], ["train", "autoencoder", "--help"],
    ["status", "--catalog", "shop.lk"], ["status", "--catalog", "shop.lk", "--json"],
    ["similar", "red-rect", "--catalog", "shop.lk", "--json"],
    ["similar", "red-rect", "--catalog", "shop.lk", "--where", "shape=rect", "--dedupe"],
    ["search", "photos/blue-rect.jpg", "--catalog", "shop.lk", "-k", "3"],
    ["search", "--item", "red-rect", "--item", "green-rect", "--not-item", "blue-rect", "--catalog", "shop.lk"],
    ["duplicates", "--catalog", "shop.lk", "-q"],
    ["evaluate", "--catalog", "shop.lk", "--label", "colour", "-k", "3", "--bootstrap", "50", "-q"],
    ["models"],
], ids=lambda a: " ".join(a))
def test_light_commands_import_no_torch_matplotlib_or_fastapi(pixels_catalog, args):
    res, loaded = _run_counting_imports(args, pixels_catalog)
    assert res.returncode == 0, res.stderr
    assert loaded == [], f"lookalike {' '.join(args)} loaded {loaded}"
    if args[0] == "similar" and "--json" in args:
        matches = json.loads(res.stdout)
        assert matches and matches[0]["id"] == "red-rect2" and matches[0]["similarity"] > 0.9


@pytest.mark.slow
def test_a_network_model_still_loads_torch_when_it_is_needed(pixels_catalog, tmp_path):
    """The lazy imports are not a switch that leaves network models broken: a timm catalog loads torch."""
    res, loaded = _run_counting_imports(["index", str(pixels_catalog / "photos"), "--catalog", str(tmp_path / "t.lk"),
                                         "--model", "timm:test_resnet.r160_in1k", "--weights", "random", "-q"],
                                        pixels_catalog)
    assert res.returncode == 0, res.stderr
    assert "torch" in loaded and "timm" in loaded
