"""Package attributes imported on first use (PEP 562), so importing a package does not import its heavy
submodules: ``lookalike.catalog`` without FAISS until a catalog is opened, ``lookalike`` without PyTorch."""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, where: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose public name ``n`` lives in submodule ``where[n]``
    (relative to the package, e.g. ``"catalog.catalog"``). A name is imported once, then kept in the package.

    Raises (from ``__getattr__``):
        AttributeError: ``package`` has no such name.
    """

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
