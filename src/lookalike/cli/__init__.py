"""The ``lookalike`` command: a thin map from subcommands to library calls; it owns the terminal.

One module per group of commands (``catalog``, ``search``, ``analysis``, ``figures``, ``train``, ``serve``);
the parser is built from ``common`` without importing PyTorch, FAISS, matplotlib or FastAPI, and each command
imports what it needs when it runs. Expected failures print one line and exit with code 2; Ctrl-C during
indexing keeps finished batches; a closed pipe (``| head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..core.errors import LookalikeError
from ..core.version import __version__
from . import analysis, catalog, figures, rules, search, serve, text, train
from .common import EXIT_USAGE, parent_parsers


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    from rich.console import Console

    out = Console(width=None if sys.stdout.isatty() else 160, soft_wrap=not sys.stdout.isatty())
    try:
        return int(args.func(args, out) or 0)
    except LookalikeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished batches are saved; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``lookalike similar ID --json | head``): stop quietly, as Unix tools do.
        try:  # Python flushes stdout again at exit: point it at /dev/null so that says nothing either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (AttributeError, OSError, ValueError):
            pass
        return 141


def run() -> None:
    """The console script: ``main``, then exit without the interpreter's last garbage collections.

    A command that loaded PyTorch, timm and OpenVINO leaves millions of objects; Python's finalisation walks
    them all in two full collections (1.4 s after ``lookalike search`` on the 2-core machine). ``gc.freeze``
    (Python docs, ``gc`` module) moves them out of the collector's sight, so exit takes 0.3 s; atexit
    handlers, buffered output and module teardown still run as usual. Not part of ``main``: a process that
    goes on after it (the tests) must keep collecting.
    """
    import gc

    code = main()
    gc.freeze()
    sys.exit(code)


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.ERROR if getattr(args, "quiet", False) else logging.WARNING
    if getattr(args, "verbose", False):
        level = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("lookalike")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def build_parser() -> argparse.ArgumentParser:
    """The whole ``lookalike`` parser; builds without importing any heavy library."""
    parser = argparse.ArgumentParser(
        prog="lookalike", description="Recommend products that look like a given one.",
        epilog="Run `lookalike demo` for a tour; `lookalike COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"lookalike {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = parent_parsers()
    catalog.add_parsers(sub, parents)  # index, tune, status, copy, models, demo
    search.add_parsers(sub, parents)  # search, similar
    rules.add_parsers(sub, parents)  # rules set|show|clear
    serve.add_parsers(sub, parents)
    analysis.add_parsers(sub, parents)  # evaluate, cluster, duplicates, recommend
    figures.add_parsers(sub, parents)  # plot, report
    train.add_parsers(sub, parents)  # pack, train, classify
    text.add_parsers(sub, parents)  # text add|remove (LiT towers)
    return parser


if __name__ == "__main__":
    run()
