"""The documentation works: the README's and the Getting-started guide's examples run, in order, as a new user
types them; every `lookalike` command line anywhere in the docs names commands and options that exist; the
README stays a front page whose links lead somewhere. The site itself is built by .ci/run
(``mkdocs build --strict``: a broken link or anchor, or a reference page that cannot be generated, fails it).

An example block is skipped only when an HTML comment right above it says so with a reason
(``<!-- example: skip (a server runs until Ctrl-C) -->``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RUN_IN_ORDER = [README, DOCS / "getting-started.md"]
# The install the README and the guide give; .ci/run proves it in a fresh virtual environment, so here it is
# replaced by a stand-in `.venv` whose `lookalike` and `python` are this interpreter with this checkout's code.
INSTALL = "python3 -m venv .venv && .venv/bin/pip install -e ."
SKIP = re.compile(r"<!--\s*example:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")


@dataclass
class Block:
    file: Path
    line: int
    lang: str
    code: str
    skip: str | None


def code_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file (```lang ... ```), with the skip marker above each, if any."""
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m and m["lang"]:
            start = i
            i += 1
            body = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            above = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
            skip = SKIP.search(above)
            blocks.append(Block(path, start + 1, m["lang"], "\n".join(body) + "\n", skip and skip["reason"]))
        i += 1
    return blocks


def shell_commands(code: str) -> list[str]:
    """The command lines of a shell block: continuation lines joined, comments dropped."""
    joined = code.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        if words:
            out.append(shlex.join(words))
    return out


def all_doc_files() -> list[Path]:
    return [README, *sorted(p for p in DOCS.rglob("*.md"))]


# -- quick checks ------------------------------------------------------------------------------------------------


def test_every_lookalike_command_line_in_the_docs_names_real_commands_and_options():
    """A renamed or removed option fails here, wherever a page still shows it (guides included)."""
    from lookalike.cli import build_parser

    parser = build_parser()
    problems = []
    checked = 0
    for path in all_doc_files():
        for block in code_blocks(path):
            if block.lang not in ("bash", "sh", "shell", "console"):
                continue
            for command in shell_commands(block.code):
                for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", command):
                    try:
                        words = shlex.split(part)
                    except ValueError:  # a quoted `|` or `;` cut the line: check the whole command instead
                        words = shlex.split(command)
                    while words and ("=" in words[0] and not words[0].startswith("-")):  # VAR=value prefixes
                        words = words[1:]
                    if not words or Path(words[0]).name != "lookalike":
                        continue
                    checked += 1
                    problem = _check_command_line(parser, words[1:])
                    if problem:
                        problems.append(f"{path.relative_to(ROOT)}:{block.line}: `{part}`: {problem}")
    assert checked > 50  # the walk found the docs' command lines
    assert not problems, "\n".join(problems)


def _check_command_line(parser, words: list[str]) -> str | None:
    """Which of ``words`` is not a command or option of the parser: the subcommands are followed, every
    ``--option`` must be one of the chosen command's. Values are not checked (docs show placeholders)."""
    import argparse

    current = parser
    rest = list(words)
    while True:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            break
        positional = next((w for w in rest if not w.startswith("-")), None)
        if positional is None:
            return None  # `lookalike --help`, `lookalike --version`
        if positional not in subs[0].choices:
            return f"no command {positional!r}"
        rest = rest[rest.index(positional) + 1:]
        current = subs[0].choices[positional]
    known = {s for a in current._actions for s in a.option_strings}
    for word in rest:
        if word.startswith("--"):
            name = word.split("=", 1)[0]
            if name not in known:
                return f"{current.prog} has no option {name}"
    return None


def test_the_readme_is_a_front_page_whose_links_lead_somewhere():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    assert INSTALL in text and ".ci/run" in text  # the two commands
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README links to {target}, which is not in the repository"


def test_ci_runs_the_strict_site_build_and_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "mkdocs build --strict" in ci
    assert "-m pytest" in ci and "ruff check" in ci


# -- the examples, run ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A folder laid out as a clone whose README install has run: ``src/lookalike/demo_data`` (the photos the
    examples use) and a ``.venv`` whose ``bin/`` runs this checkout with this interpreter."""
    from lookalike.catalog.demo import demo_data

    root = tmp_path_factory.mktemp("clone")
    (root / "src" / "lookalike").mkdir(parents=True)
    (root / "src" / "lookalike" / "demo_data").symlink_to(demo_data(), target_is_directory=True)
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    (bin_dir / "lookalike").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lookalike.cli "$@"\n')
    (bin_dir / "lookalike").chmod(0o755)
    (bin_dir / "activate").write_text(f'PATH="{bin_dir}:$PATH"; export PATH\n')
    return root


def _env() -> dict[str, str]:
    src = str(ROOT / "src")
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{path}" if path else src, "HF_HUB_OFFLINE": "1",
            "COLUMNS": "120", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def _run_examples(doc: Path, cwd: Path) -> int:
    """Run the shell and Python blocks of ``doc`` in order in ``cwd``; fail naming the block that failed."""
    ran = 0
    env = _env()
    for block in code_blocks(doc):
        if block.skip or block.lang not in ("bash", "python"):
            continue
        if block.lang == "bash":
            assert block.code.count(INSTALL) <= 1
            code = block.code.replace(INSTALL, "true")
            cmd = ["bash", "-euo", "pipefail", "-c", code]
        else:
            cmd = [str(cwd / ".venv" / "bin" / "python"), "-c", block.code]
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        where = f"{doc.relative_to(ROOT)} line {block.line}"
        assert proc.returncode == 0, f"the example at {where} failed ({proc.returncode}):\n{block.code}\n" \
                                     f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, f"the example at {where} printed a traceback:\n{proc.stderr[-3000:]}"
        ran += 1
    return ran


@pytest.mark.slow
@pytest.mark.parametrize("doc", RUN_IN_ORDER, ids=lambda p: p.name)
def test_every_example_runs_in_order(doc, clone, tmp_path):
    """As a new user would: from the root of a fresh clone, the README's (or the guide's) blocks one after the
    other, shell and Python, on the sample photos shipped in the package, offline."""
    cwd = tmp_path / "clone"
    shutil.copytree(clone, cwd, symlinks=True)
    assert _run_examples(doc, cwd) >= 3
