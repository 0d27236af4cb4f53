"""The config's JSON Schema: ``gateproxy schema`` (the console script) prints the committed
docs/gateproxy.schema.json, the repo's configs validate against it with ``jsonschema``, and it
rejects what the loader rejects for the reasons a schema can see."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateproxy.core.config import load_config_text
from gateproxy.core.config_schema import config_schema
from gateproxy.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "docs" / "gateproxy.schema.json"
SCRIPT = Path(sys.executable).with_name("gateproxy")
CONFIGS = sorted((REPO / "config").glob("*.yaml"))
VALIDATOR = jsonschema.Draft202012Validator(config_schema())


def test_the_command_prints_the_committed_schema() -> None:
    result = subprocess.run(
        [str(SCRIPT), "schema"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == COMMITTED.read_text(), (
        "docs/gateproxy.schema.json is stale: run `gateproxy schema > docs/gateproxy.schema.json`"
    )
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("/2020-12/schema")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_repos_configs_validate(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    assert [e.message for e in VALIDATOR.iter_errors(data)] == []


def _minimal(**listener: Any) -> dict[str, Any]:
    return {
        "listeners": [
            {"name": "p", "bind": "127.0.0.1:0", "routes": [{"upstream": "app"}], **listener}
        ],
        "upstreams": {"app": {"servers": ["127.0.0.1:8080"]}},
    }


@pytest.mark.parametrize(
    "limits",
    [
        {"keepalive_timeout": "75s"},
        {"keepalive_timeout": "300ms"},
        {"keepalive_timeout": 1.5},
        {"max_header_bytes": "16KiB"},
        {"max_body_bytes": 4096},
    ],
)
def test_durations_and_sizes_take_every_spelling_the_loader_takes(limits: dict[str, Any]) -> None:
    data = _minimal(limits=limits)
    assert VALIDATOR.is_valid(data)
    load_config_text(json.dumps(data), source="t.yaml")  # and the loader agrees


def test_a_bare_yaml_off_is_accepted_as_the_loader_does() -> None:
    data = yaml.safe_load("path: off\n")
    assert data == {"path": False}
    assert VALIDATOR.is_valid({**_minimal(), "access_log": data})


@pytest.mark.parametrize(
    "change",
    [
        {"typo_key": 1},
        {"limits": {"keepalive_timeout": "soon"}},
        {"limits": {"max_header_bytes": "16 parsecs"}},
        {"limits": {"max_headers": "many"}},
        {"tls": {"min_version": "1.1", "certificates": []}},
    ],
    ids=["unknown key", "bad duration", "bad size", "not an int", "bad enum"],
)
def test_mistakes_the_schema_can_see_are_errors_for_it_and_the_loader(
    change: dict[str, Any],
) -> None:
    data = _minimal(**change)
    assert not VALIDATOR.is_valid(data)
    with pytest.raises(ConfigError):
        load_config_text(json.dumps(data), source="t.yaml")
