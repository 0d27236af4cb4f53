"""Config of ``listeners[].access`` and ``admin.access``: nginx's ``allow`` / ``deny`` rules.

An ordered list of rule texts (``["allow 10.0.0.0/8", "deny all"]``), first match wins; what
a rule means is ``core.access``. Each rule is parsed here once, so a bad one is a config error
at its key path (``listeners[0].access[1]``), and kept as its normalised text.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator

from gateproxy.core.access import RULE_HELP, parse_rule


def _parse_access_rule(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{RULE_HELP}, got {value!r}")
    parse_rule(value)
    return " ".join(value.split())


AccessRuleText = Annotated[str, BeforeValidator(_parse_access_rule)]
AccessRules = tuple[AccessRuleText, ...]
