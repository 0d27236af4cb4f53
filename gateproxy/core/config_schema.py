"""The config's JSON Schema, generated from the pydantic model, for editors. Sans-IO.

``gateproxy schema`` prints :func:`config_schema`; ``docs/gateproxy.schema.json`` is a copy (a
test keeps it equal). An editor with yaml-language-server validates a config as it is typed
when the file starts with ``# yaml-language-server: $schema=<path or URL of that file>``.

pydantic describes a field by its type after validation; where a before-validator takes more
spellings than that type (``"300ms"`` for a number of seconds, ``"16KiB"`` for a number of
bytes, YAML 1.1's unquoted ``off`` / ``on`` read as booleans), :class:`_ConfigSchema` writes the
spellings the file may hold instead. The cross-checks (unique names, routes to known upstreams,
certificate files) are not in the schema: ``gateproxy check`` runs them.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from gateproxy.core import config
from gateproxy.core.units import parse_duration, parse_size

SCHEMA_ID = "https://gateproxy.invalid/gateproxy.schema.json"
_NUMBER = r"\s*[0-9]+(\.[0-9]+)?\s*"
DURATION: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": rf"^{_NUMBER}([mM][sS]|[sSmMhHdD])?\s*$"},
    ],
    "description": "seconds, or a number with a unit: ms, s, m, h, d ('300ms', '5s', '1h')",
}
SIZE: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": rf"^{_NUMBER}([bB]|[kKmMgG]([iI]?[bB])?)?\s*$"},
    ],
    "description": "bytes, or a number with a unit: KB, KiB, MB, MiB, GB, GiB ('16KiB')",
}


class _ConfigSchema(GenerateJsonSchema):
    def function_before_schema(
        self, schema: core_schema.BeforeValidatorFunctionSchema
    ) -> JsonSchemaValue:
        function = schema["function"]["function"]
        if function is parse_duration:
            return dict(DURATION)
        if function is parse_size:
            return dict(SIZE)
        inner = super().function_before_schema(schema)
        if function is config._yaml_off:
            return {"anyOf": [inner, {"const": False, "description": "YAML 1.1's bare off"}]}
        if function is config._yaml_on_off:
            return {"anyOf": [inner, {"type": "boolean", "description": "YAML 1.1's on/off"}]}
        return inner


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a gateproxy YAML config."""
    schema = config.Config.model_json_schema(schema_generator=_ConfigSchema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "gateproxy configuration",
        **{k: v for k, v in schema.items() if k != "title"},
    }
