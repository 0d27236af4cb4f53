"""Which core modules are compiled with mypyc, and the pure-Python fallback.

``pip install`` compiles :data:`COMPILED` with mypyc when a C compiler and mypy are at hand
(``setup.py``); the ``.py`` files stay beside the extension modules and are the fallback. The
compiled modules are one group (they call each other's native classes directly), so they are
used all together or not at all: :func:`use_pure_python` makes every one of them load from its
source when ``GATEPROXY_PURE_PYTHON=1`` is set, or when any extension module is older than its
source (an edited checkout that was not rebuilt: ``pip install -e .`` rebuilds). Nothing here
runs when nothing was compiled.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

COMPILED = (
    "access",
    "actions",
    "balancer",
    "client_address",
    "exchange",
    "forwarding",
    "h11_fallback",
    "h1_client",
    "h1_heads",
    "h1_server",
    "headers",
    "health",
    "histogram",
    "http_events",
    "limits",
    "lingering",
    "machine",
    "pins",
    "policy",
    "rate_limit",
    "request_checks",
    "request_rules",
    "routing",
    "session_guard",
    "shared_table",
    "upgrade",
    "upstream_state",
)
_CORE = Path(__file__).resolve().parent / "core"
_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _extension(name: str) -> Path | None:
    for suffix in _SUFFIXES:
        path = _CORE / f"{name}{suffix}"
        if path.exists():
            return path
    return None


def compiled_modules() -> dict[str, Path]:
    """``{module: extension file}`` for the core modules built by mypyc here."""
    found = {name: _extension(name) for name in COMPILED}
    return {name: path for name, path in found.items() if path is not None}


def stale(modules: dict[str, Path], *, core: Path = _CORE) -> list[str]:
    """The compiled modules whose source (in ``core``) changed after they were built."""
    return [
        name
        for name, path in modules.items()
        if (core / f"{name}.py").stat().st_mtime > path.stat().st_mtime
    ]


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds ``gateproxy.core.<name>`` for the compiled names at their ``.py`` source."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        prefix, _, name = fullname.rpartition(".")
        if prefix != "gateproxy.core" or name not in COMPILED:
            return None
        return importlib.util.spec_from_file_location(fullname, _CORE / f"{name}.py")


def use_pure_python() -> bool:
    """Install the source finder when the compiled group must not be used; True if it was."""
    modules = compiled_modules()
    if not modules:
        return False
    if os.environ.get("GATEPROXY_PURE_PYTHON") != "1" and not stale(modules):
        return False
    if not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())
    return True


def build_description() -> str:
    """How the core runs here, for ``gateproxy --version``: compiled, pure, or stale."""
    modules = compiled_modules()
    if not modules:
        return "pure-Python core (nothing compiled)"
    if os.environ.get("GATEPROXY_PURE_PYTHON") == "1":
        return "pure-Python core (GATEPROXY_PURE_PYTHON=1)"
    old = stale(modules)
    if old:
        return (
            f"pure-Python core: compiled {old[0]} is older than its source "
            "(pip install -e . rebuilds)"
        )
    return f"compiled core ({len(modules)} modules)"


def running_compiled() -> bool:
    """Whether the connection machine in use is the compiled one."""
    from gateproxy.core import machine

    return not str(machine.__file__).endswith(".py")
