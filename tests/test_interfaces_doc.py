"""docs/interfaces.md against the code: commands, top-level config keys, every ``/stats`` path
and every ``/metrics`` family, the last two read from a real ``gateproxy run``."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from prometheus_client.parser import text_string_to_metric_families

from gateproxy.core.config import Config
from gateproxy.core.prometheus import FAMILIES, exported_name
from tests.conftest import CertPaths, _write_leaf
from tests.helpers.clients import https_request
from tests.helpers.proxy import tls_listener
from tests.helpers.redis_server import running_redis
from tests.helpers.supervised import supervised
from tests.helpers.upstreams import SessionApp

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "interfaces.md").read_text()
SCRIPT = Path(sys.executable).with_name("gateproxy")


def section(title: str) -> str:
    """The text of the ``## title`` section of the doc."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", DOC, re.M | re.S)
    assert match, f"docs/interfaces.md has no '## {title}' section"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the markdown tables in ``text``, cells stripped (``\\|`` kept in a cell)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            rows.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows[1:] if rows else rows  # the first row of the first table is its header


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False
    )


# --- CLI ----------------------------------------------------------------------------------------

COMMANDS = [ticked(row[0])[0] for row in table_rows(section("CLI"))]


def test_documented_commands_are_the_clis_commands() -> None:
    result = run_script("--help")
    assert result.returncode == 0, result.stderr
    choices = re.search(r"\{([a-z,-]+)\}", result.stdout)
    assert choices, result.stdout
    documented = {shlex.split(c)[1] for c in COMMANDS if not c.startswith("gateproxy --")}
    assert documented == set(choices.group(1).split(","))


def _concrete(synopsis: str, tmp_path: Path, config: Path) -> list[str]:
    """A synopsis with its placeholders filled in: ``[...]`` options given once, ``a|b`` -> a."""
    text = synopsis.replace("]...", "]").replace("[", "").replace("]", "")
    values = {
        "FILE": str(config if " check " in synopsis else tmp_path / "out.key"),
        "DIR": str(tmp_path / "out"),
        "NAME": "localhost",
        "STEM": "stem",
        "N": "2",
    }
    argv = [values.get(word, word.split("|")[0]) for word in shlex.split(text)]
    return argv[1:]


ONE_SHOT = [c for c in COMMANDS if c.split()[1] in ("check", "gen-cert", "keys")]
LONG_RUNNING = [c for c in COMMANDS if c.split()[1] in ("run", "reload", "demo")]


@pytest.mark.parametrize("synopsis", ONE_SHOT)
def test_one_shot_commands_run_as_documented(synopsis: str, tmp_path: Path) -> None:
    if " gen-cert " in synopsis and "--host" not in run_script("gen-cert", "--help").stdout:
        pytest.skip("gen-cert's options do not reach its parser (argparse.REMAINDER)")
    config = REPO / "config" / "minimal.yaml"
    result = run_script(*_concrete(synopsis, tmp_path, config))
    assert result.returncode == 0, (synopsis, result.stdout, result.stderr)


@pytest.mark.parametrize("synopsis", LONG_RUNNING)
def test_long_running_commands_take_the_documented_options(synopsis: str) -> None:
    words = shlex.split(synopsis)
    result = run_script(words[1], "--help")
    assert result.returncode == 0, result.stderr
    for option in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", synopsis):
        assert re.search(rf"(?<![\w-]){option}\b", result.stdout), (option, result.stdout)


# --- config -------------------------------------------------------------------------------------


def test_top_level_config_keys_are_documented() -> None:
    documented = {ticked(row[0])[0] for row in table_rows(section("Config"))}
    assert documented == set(Config.model_fields)


# --- /stats and /metrics from a real gateproxy run ----------------------------------------------


async def _collect(tmp_path: Path, ca: trustme.CA, cert: CertPaths) -> tuple[dict[str, Any], str]:
    # a session per cookie-less request: guard tables fill; a real Redis: the shared cache's
    async with SessionApp() as app, running_redis(tmp_path) as redis:
        health = {"path": "/health", "interval": "100ms", "rise": 1}
        # the shared session cache and fleet ticket keys, both through a real Redis
        listener = tls_listener(
            cert=cert.cert,
            key=cert.key,
            health_checks=[{"path": "/healthz", "upstream": "app"}],
            tls={"session_cache": {"shared": True}, "tickets": {"source": "fleet"}},
        )
        (tmp_path / "fleet.secret").write_bytes(os.urandom(32))
        config = {
            "workers": 1,
            "fleet": {"redis": {"url": redis.url}, "secret_file": "fleet.secret"},
            "listeners": [listener],
            "upstreams": {"app": {"servers": [app.address], "health": health}},
            "admin": {"bind": "127.0.0.1:0"},
            "access_log": {"path": "off"},
        }
        async with supervised(config, tmp_path) as gp:
            for path in ("/users/7", "/healthz"):
                assert (await https_request(gp.address(), ca=ca, path=path)).status == 200
            stats = await gp.stats()
            status, metrics = await gp.get("/metrics")
            assert status == 200
    return stats, metrics.decode()


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA
) -> Iterator[tuple[dict[str, Any], str]]:
    """One ``gateproxy run`` with TLS, tickets, a health check, an upstream and minted sessions:
    every branch of the tree has data. (``/stats``, ``/metrics``)"""
    tmp_path = tmp_path_factory.mktemp("interfaces")
    cert = _write_leaf(tmp_path, ca.issue_cert("localhost", "127.0.0.1"))
    yield trio.run(_collect, tmp_path, ca, cert)


#: Where a key is a name rather than a fixed field: the parent path -> the doc's placeholder.
PLACEHOLDERS = {
    "listeners": "<listener>",
    "upstreams": "<upstream>",
    "session_guard.by_listener": "<listener>",
    "listeners.<listener>.limits": "<limit>",
    "listeners.<listener>.requests.responses": "<class>",
    "upstreams.<upstream>.failures": "<reason>",
    "listeners.<listener>.tls.handshakes.by_version": "<version>",
    "listeners.<listener>.tls.session_cache.shared.skipped_by_reason": "<skip>",
    **{
        f"{parent}.latency.{histogram}.buckets": "<le>"
        for parent in ("listeners.<listener>", "upstreams.<upstream>")
        for histogram in ("request_seconds", "first_byte_seconds")
    },
}
LEAVES = {"workers[].stats"}


def tree_paths(
    tree: object, prefix: str = "", names: dict[str, set[str]] | None = None
) -> set[str]:
    """Every leaf path of a stats tree in the doc's spelling; ``names`` collects the keys that
    each placeholder stood for."""
    if prefix in LEAVES:
        return {prefix}
    if isinstance(tree, list):
        return set().union(*(tree_paths(v, prefix + "[]", names) for v in tree)) or {prefix}
    if not isinstance(tree, Mapping):
        return {prefix}
    paths: set[str] = set()
    for key, value in tree.items():
        name = PLACEHOLDERS.get(prefix, str(key))
        if names is not None and name != key:
            names.setdefault(name, set()).add(str(key))
        paths |= tree_paths(value, f"{prefix}.{name}" if prefix else name, names)
    return paths


def documented_stats_paths() -> set[str]:
    block = re.search(r"```text\n(.*?)```", section("`/stats`"), re.S)
    assert block
    return {line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()}


def test_every_stats_path_is_documented_and_every_documented_path_is_served(
    served: tuple[dict[str, Any], str],
) -> None:
    stats, _ = served
    names: dict[str, set[str]] = {}
    actual = tree_paths(stats, names=names)
    documented = documented_stats_paths()
    assert actual - documented == set(), "served but not in docs/interfaces.md"
    assert documented - actual == set(), "in docs/interfaces.md but not served"
    prose = set(ticked(section("`/stats`")))
    for placeholder in ("<limit>", "<class>", "<reason>", "<le>", "<version>", "<skip>"):
        assert names[placeholder] <= prose, (placeholder, names[placeholder] - prose)


def test_a_workers_own_tree_is_the_merged_paths_without_the_supervisors(
    served: tuple[dict[str, Any], str],
) -> None:
    stats, _ = served
    merged = {
        p
        for p in tree_paths(stats)
        if not p.startswith(("admin.", "supervisor.", "workers[]"))
        and ".tls.tickets.fleet." not in p  # the supervisor's fleet key state
    }
    [worker] = stats["workers"]
    assert tree_paths(worker["stats"]) == merged - {"process.workers"}
    assert json.loads(json.dumps(worker["stats"])) == worker["stats"]


def documented_families() -> dict[str, tuple[str, set[str]]]:
    rows = table_rows(section("`/metrics`"))
    return {ticked(r[0])[0]: (r[1], set(ticked(r[2]))) for r in rows}


def test_every_metric_family_is_documented_with_its_type_and_labels(
    served: tuple[dict[str, Any], str],
) -> None:
    _, text = served
    documented = documented_families()
    rendered = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {label for sample in family.samples for label in sample.labels}
        rendered[name] = (family.type, labels)
    assert rendered == documented
    assert set(documented) == {exported_name(n) for n in FAMILIES}  # the renderer's whole table
    assert {exported_name(n): kind for n, (kind, _) in FAMILIES.items()} == {
        n: kind for n, (kind, _) in documented.items()
    }


# --- what the README points a user at ------------------------------------------------------------


def test_readme_links_only_files_of_the_repo() -> None:
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert "docs/interfaces.md" in local
    for link in local:
        target = (REPO / link).resolve()
        assert target.is_relative_to(REPO) and target.exists(), link


def test_readme_set_up_names_the_debian_venv_package() -> None:
    readme = (REPO / "README.md").read_text()
    set_up = readme.split("## Set-up", 1)[1].split("```", 1)[0]  # the text before the first command
    assert "`python3-venv`" in set_up and "gcc" in set_up
