"""gateproxy.compiled: the mypyc-compiled core modules and their pure-Python fallback.

``pip install`` compiles the hot core modules when it can; the suite then runs on them. The
pure-Python modules must behave the same: the parser pair and connection machine tests run
again, in a subprocess, with ``GATEPROXY_PURE_PYTHON=1``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateproxy.compiled import COMPILED, compiled_modules, running_compiled, stale

REPO = Path(__file__).resolve().parent.parent
PURE = os.environ.get("GATEPROXY_PURE_PYTHON") == "1"
# The tests of the modules the machine runs on (each compiled module is exercised by them).
MACHINE_TESTS = [
    "tests/core/test_machine.py",
    "tests/core/test_machine_framing.py",
    "tests/core/test_forwarding.py",
    "tests/core/test_headers.py",
    "tests/core/test_request_rules.py",
    "tests/core/test_pool.py",
    "tests/core/test_balancer.py",
    "tests/core/test_limits.py",
    "tests/core/test_routing.py",
]


def test_every_compiled_name_is_a_core_module() -> None:
    assert all((REPO / "gateproxy" / "core" / f"{name}.py").is_file() for name in COMPILED)


def test_the_compiled_group_is_used_whole_or_not_at_all() -> None:
    from gateproxy.core import h1_server, machine

    assert str(machine.__file__).endswith(".py") == str(h1_server.__file__).endswith(".py")
    if PURE or not compiled_modules() or stale(compiled_modules()):
        assert not running_compiled()
    else:
        assert running_compiled()


def test_a_source_newer_than_its_build_is_stale(tmp_path: Path) -> None:
    (tmp_path / "machine.py").write_text("")
    built = tmp_path / "machine.so"
    built.write_text("")
    os.utime(built, (1000, 1000))
    assert stale({"machine": built}, core=tmp_path) == ["machine"]
    os.utime(built, None)
    os.utime(tmp_path / "machine.py", (1000, 1000))
    assert stale({"machine": built}, core=tmp_path) == []


@pytest.mark.skipif(PURE, reason="this run is already the pure-Python one")
def test_the_machine_tests_pass_on_the_pure_python_modules() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",  # one process: the suite around it already uses every core
            *MACHINE_TESTS,
            "tests/test_compiled.py::test_the_compiled_group_is_used_whole_or_not_at_all",
        ],
        cwd=REPO,
        env={**os.environ, "GATEPROXY_PURE_PYTHON": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


@pytest.mark.parametrize("pure", ["1", ""])
def test_version_names_the_core_the_console_script_runs(pure: str) -> None:
    env = {**os.environ, "GATEPROXY_PURE_PYTHON": pure}
    script = Path(sys.executable).parent / "gateproxy"
    out = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, env=env, check=True
    ).stdout
    probe = "from gateproxy.compiled import running_compiled; print(running_compiled())"
    compiled = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()
    if compiled == "True":
        assert f"compiled core ({len(COMPILED)} modules)" in out, out
    else:
        assert "pure-Python core" in out, out
    if pure:
        assert compiled == "False"
