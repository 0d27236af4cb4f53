"""Build gateproxy, compiling its hot core modules with mypyc when possible.

Everything else is in pyproject.toml. The compiled modules are optional: without a C compiler,
without mypy in the build environment, with ``GATEPROXY_PURE_PYTHON=1``, or when compiling
fails, the package installs as pure Python (the same ``.py`` files, a little slower). The list
of modules is ``gateproxy.compiled.COMPILED``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def _compiled_names() -> list[str]:
    namespace: dict[str, Any] = {}
    source = (HERE / "gateproxy" / "compiled.py").read_text(encoding="utf-8")
    start = source.index("COMPILED = (")
    exec(source[start : source.index(")", start) + 1], namespace)
    return list(namespace["COMPILED"])


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _extensions() -> list[Any]:
    if os.environ.get("GATEPROXY_PURE_PYTHON") == "1" or _compiler() is None:
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("gateproxy: mypy is not installed here; installing pure Python", file=sys.stderr)
        return []
    paths = [f"gateproxy/core/{name}.py" for name in _compiled_names()]
    try:
        extensions = mypycify(paths, opt_level="3", debug_level="0")
    except (Exception, SystemExit) as exc:  # a mypyc error must not stop the installation
        print(f"gateproxy: mypyc failed ({exc}); installing pure Python", file=sys.stderr)
        return []
    for extension in extensions:
        extension.optional = True  # a C compile error leaves the pure-Python module in use
    return list(extensions)


class _BuildExt(build_ext):
    """build_ext that reports a failed optional extension in one line and goes on."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            print(f"gateproxy: compiling failed ({exc}); using pure Python", file=sys.stderr)


setup(ext_modules=_extensions(), cmdclass={"build_ext": _BuildExt})
