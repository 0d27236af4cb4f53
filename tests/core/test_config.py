from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateproxy.core.config import (
    Config,
    check_config_data,
    load_config_data,
    load_config_text,
    split_hostport,
)
from gateproxy.errors import ConfigError

GOOD = {
    "listeners": [
        {
            "name": "public",
            "bind": "127.0.0.1:8443",
            "tls": {"certificates": [{"cert": "c.pem", "key": "k.pem"}]},
            "routes": [{"path_prefix": "/", "upstream": "app"}],
        }
    ],
    "upstreams": {"app": {"servers": ["127.0.0.1:8080"]}},
}


def _with(path: str, value: object) -> dict[str, object]:
    """GOOD with one dotted key replaced (a[0].b style)."""
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    node = data
    parts = path.replace("[", ".").replace("]", "").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    last = parts[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return data


def _problems(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_data(data, source="gp.yaml")
    return str(info.value).splitlines()


def test_good_config_loads_frozen() -> None:
    config = load_config_data(GOOD)
    assert config.listeners[0].tls is not None
    assert config.listeners[0].tls.session_cache.max_entries == 20000
    with pytest.raises(Exception, match=r"frozen"):
        config.listeners[0].name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "listeners.0.tls.session_cache.max_entries",
            -5,
            "gp.yaml: listeners[0].tls.session_cache.max_entries: "
            "Input should be greater than or equal to 1, got -5",
        ),
        (
            "listeners.0.tls.session_cache.max_entries",
            "20000",
            "gp.yaml: listeners[0].tls.session_cache.max_entries: "
            "Input should be a valid integer, got '20000'",
        ),
        ("listeners.0.tls.session_cache.mode", "lfu", "listeners[0].tls.session_cache.mode"),
        (
            "listeners.0.tls.handshake_timeout",
            "10 parsecs",
            "listeners[0].tls.handshake_timeout: expected a duration",
        ),
        (
            "listeners.0.limits.max_body_bytes",
            "10 MiBs",
            "listeners[0].limits.max_body_bytes: expected a size",
        ),
        ("listeners.0.bind", "localhost", "listeners[0].bind: expected 'host:port'"),
        (
            "listeners.0.probe_clients",
            ["10.0.0.0/33"],
            "listeners[0].probe_clients[0]: expected a CIDR",
        ),
        (
            "listeners.0.routes.0.upstream",
            "nope",
            "listeners[0].routes[0].upstream: unknown upstream 'nope'",
        ),
        ("listeners.0.tls.min_version", "1.1", "listeners[0].tls.min_version"),
        ("listeners.0.tls.sesion_cache", {}, "listeners[0].tls.sesion_cache: unknown key"),
        ("upstreams.app.servers", [], "upstreams.app.servers"),
        (
            "session_guard.probe_user_agents",
            ["(unclosed"],
            "session_guard.probe_user_agents[0]: invalid regular expression",
        ),
        ("workers", 0, "workers"),
        ("bogus_top", 1, "bogus_top: unknown key"),
        ("listeners.0.tls.curves", "X25519::P-256", "listeners[0].tls.curves: expected colon"),
        ("listeners.0.tls.curves", [], "listeners[0].tls.curves: expected colon"),
        ("listeners.0.tls.curves", 25519, "listeners[0].tls.curves: expected group names"),
        ("listeners.0.tls.prefer_server_ciphers", "on", "listeners[0].tls.prefer_server_ciphers"),
        (
            "listeners.0.tls.session_id_context",
            "HTTP",
            "listeners[0].tls.session_id_context: expected nginx, python or 1-32 bytes as hex",
        ),
        ("listeners.0.tls.session_id_context", "ab" * 33, "listeners[0].tls.session_id_context"),
        ("listeners.0.tls.session_id_context", "abc", "listeners[0].tls.session_id_context"),
    ],
)
def test_each_problem_names_file_and_key_path(path: str, value: object, expected: str) -> None:
    problems = _problems(_with(path, value))
    assert any(expected in line for line in problems), problems
    assert all(line.startswith("gp.yaml: ") for line in problems)


def test_every_problem_is_listed_at_once() -> None:
    data = _with("listeners.0.tls.session_cache.max_entries", -1)
    data["listeners"].append(dict(data["listeners"][0], tls=None))  # duplicate name and bind
    data["listeners"][1]["routes"] = [{"upstream": "ghost"}]
    data["upstreams"]["app"]["keepalive"] = "yes"
    data["listeners"][0]["routes"].append({"upstream": "ap"})
    data["listeners"][0]["health_checks"] = [{"path": "/h", "upstream": "nope"}]
    problems = _problems(data)
    # the schema errors and, in the same run, the cross-checks over every part that validated
    # (including listeners[0], whose tls section did not)
    assert problems == [
        "gp.yaml: listeners[0].tls.session_cache.max_entries: "
        "Input should be greater than or equal to 1, got -1",
        "gp.yaml: upstreams.app.keepalive: Input should be a valid integer, got 'yes'",
        "gp.yaml: listeners[0].routes[1].upstream: unknown upstream 'ap' (known: ['app'])",
        "gp.yaml: listeners[0].health_checks[0].upstream: unknown upstream 'nope' (known: ['app'])",
        "gp.yaml: listeners[1].name: duplicate listener name 'public' (also listeners[0])",
        "gp.yaml: listeners[1].bind: bind '127.0.0.1:8443' is already used by listeners[0]",
        "gp.yaml: listeners[1].routes[0].upstream: unknown upstream 'ghost' (known: ['app'])",
    ]


def test_cross_checks_skip_what_failed_validation() -> None:
    data = _with("listeners.0.routes.0", {"upstream": 5})  # a route that failed: no cross-check
    data["listeners"].append({"name": "bad name!", "bind": "127.0.0.1:8443", "routes": []})
    data["admin"] = {"bind": "127.0.0.1:8443"}
    problems = _problems(data)
    assert not any("routes[0].upstream: unknown" in p for p in problems), problems
    assert not any("duplicate listener name" in p for p in problems), problems
    assert "gp.yaml: listeners[1].bind: bind '127.0.0.1:8443' is already used by listeners[0]" in (
        problems
    )
    assert "gp.yaml: admin.bind: bind '127.0.0.1:8443' is also a listener's bind" in problems
    # an unusable upstreams mapping names no upstream: no "unknown upstream" noise for routes
    data = _with("upstreams", ["app"])
    problems = _problems(data)
    assert problems == ["gp.yaml: upstreams: Input should be a valid dictionary, got ('app',)"]


def test_check_config_data_keeps_the_parts_that_validated() -> None:
    data = _with("listeners.0.limits.max_headers", -1)
    checked = check_config_data(data)
    assert checked.config is None
    assert [where for where, _tls in checked.tls_sections()] == ["listeners[0].tls"]
    assert list(checked.binds()) == [
        ("listeners[0].bind", "127.0.0.1:8443"),
        ("admin.bind", "127.0.0.1:9901"),
    ]
    good = check_config_data(GOOD)
    assert good.config is not None and good.problems == ()
    assert list(good.binds()) == list(checked.binds())


def test_min_above_max_version() -> None:
    data = _with("listeners.0.tls.min_version", "1.3")
    data["listeners"][0]["tls"]["max_version"] = "1.2"
    assert any("min_version '1.3' is above max_version '1.2'" in p for p in _problems(data))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "listeners:\n  - name: a\n    bind: x: y\n",
            "bad.yaml:3:12: not valid YAML: mapping values are not allowed here",
        ),
        (
            "listeners:\n  - name: a\n   bind: b\n",
            "bad.yaml:3:4: not valid YAML: expected <block end>, but found '<block mapping start>'"
            " (while parsing a block collection at 2:3)",
        ),
        ("a: &x 1\nb: *y\n", "bad.yaml:2:4: not valid YAML: found undefined alias 'y'"),
        ("pid_file: 2001-02-30\n", "bad.yaml: not valid YAML: day is out of range for month"),
    ],
)
def test_yaml_syntax_error_names_file_line_and_column(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, source="bad.yaml")
    assert str(info.value) == expected


def test_deeply_nested_yaml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^gp\.yaml: not valid YAML: maximum recursion"):
        load_config_text("[" * 5000, source="gp.yaml")


def test_yaml_is_loaded_safely() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_text("!!python/object/apply:os.system ['true']", source="gp.yaml")


def test_not_a_mapping() -> None:
    assert _problems([1, 2]) == ["gp.yaml: expected a mapping at the top, got [1, 2]"]


def test_probe_limits_override_only_given_keys() -> None:
    data = _with("listeners.0.probe_limits", {"max_requests_per_connection": 0})
    listener = load_config_data(data).listeners[0]
    merged = listener.probe_limits.apply_to(listener.limits)
    assert merged.max_requests_per_connection == 0
    assert merged.keepalive_timeout == listener.limits.keepalive_timeout


@pytest.mark.parametrize(("written", "mode"), [("on", "on"), ("off", "off"), ("always", "always")])
def test_lingering_close_takes_nginx_words_unquoted(written: str, mode: str) -> None:
    text = f"""
listeners:
  - name: public
    bind: "127.0.0.1:8443"
    limits: {{lingering_close: {written}, lingering_time: 10s, lingering_max_bytes: 1MiB}}
    probe_limits: {{lingering_close: off}}
    routes: [{{upstream: app}}]
upstreams: {{app: {{servers: ["127.0.0.1:8080"]}}}}
"""
    listener = load_config_text(text, source="gp.yaml").listeners[0]
    assert listener.limits.lingering_close == mode
    assert (listener.limits.lingering_time, listener.limits.lingering_max_bytes) == (10.0, 2**20)
    assert listener.probe_limits.apply_to(listener.limits).lingering_close == "off"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("lingering_close", "sometimes", "Input should be 'off', 'on' or 'always'"),
        ("lingering_close", 1, "Input should be 'off', 'on' or 'always'"),
        ("lingering_time", "0s", "Input should be greater than 0"),
        ("lingering_timeout", 0, "Input should be greater than 0"),
        ("lingering_max_bytes", 0, "Input should be greater than or equal to 1"),
    ],
)
def test_lingering_settings_are_checked(key: str, value: object, message: str) -> None:
    problems = _problems(_with(f"listeners.0.limits.{key}", value))
    assert len(problems) == 1 and problems[0].startswith(f"gp.yaml: listeners[0].limits.{key}: ")
    assert message in problems[0], problems


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:8443", "127.0.0.1", 8443),
        ("[::1]:9", "::1", 9),
        ("example.com:0", "example.com", 0),
    ],
)
def test_split_hostport(text: str, host: str, port: int) -> None:
    assert split_hostport(text) == (host, port)


# Hypothesis: whatever YAML-like data comes in, the loader either returns a Config or raises
# ConfigError whose every line names the source -- never another exception.
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "bind",
                    "tls",
                    "routes",
                    "servers",
                    "mode",
                    "upstream",
                    "x",
                    "limits",
                    "max_entries",
                ]
            ),
            children,
            max_size=4,
        ),
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.sampled_from([*list(Config.model_fields), "junk"]), _values, max_size=5))
def test_loader_never_crashes(data: dict[str, object]) -> None:
    try:
        load_config_data(data, source="fuzz.yaml")
    except ConfigError as exc:
        assert exc.problems
        assert all(line.startswith("fuzz.yaml") for line in str(exc).splitlines())


@given(
    st.sampled_from(
        [
            "listeners.0.limits.max_headers",
            "listeners.0.tls.tickets.keep",
            "upstreams.app.max_fails",
        ]
    ),
    st.integers(max_value=-1),
)
def test_negative_counts_rejected(path: str, value: int) -> None:
    problems = _problems(_with(path, value))
    dotted = path.replace(".0.", "[0].")
    assert any(dotted in p for p in problems), problems


def test_unquoted_off_is_the_word_off() -> None:
    text = """
listeners:
  - name: public
    bind: "127.0.0.1:8443"
    tls:
      certificates: [{cert: c.pem, key: k.pem}]
      session_cache: {mode: off}
    routes: [{upstream: app}]
upstreams: {app: {servers: ["127.0.0.1:8080"]}}
access_log: {path: off}
"""
    config = load_config_text(text, source="gp.yaml")
    assert config.listeners[0].tls is not None
    assert config.listeners[0].tls.session_cache.mode == "off"
    assert config.access_log.path == "off"


@pytest.mark.parametrize(
    ("value", "curves"),
    [
        ("X25519:prime256v1:secp384r1", "X25519:prime256v1:secp384r1"),
        (" X25519 : P-256 ", "X25519:P-256"),
        (["X25519", "P-256"], "X25519:P-256"),  # a YAML list, as Envoy writes it
        ("secp384r1", "secp384r1"),
    ],
)
def test_curves_in_nginx_syntax_or_as_a_list(value: object, curves: str) -> None:
    tls = load_config_data(_with("listeners.0.tls.curves", value)).listeners[0].tls
    assert tls is not None and tls.curves == curves


def test_tls_defaults() -> None:
    tls = load_config_data(GOOD).listeners[0].tls
    assert tls is not None
    assert tls.curves == "X25519:prime256v1:secp384r1"  # Mozilla intermediate
    assert tls.prefer_server_ciphers is False
    assert tls.session_id_context == "nginx"
    data = _with("listeners.0.tls.session_id_context", "00FF")
    tls = load_config_data(data).listeners[0].tls
    assert tls is not None and tls.session_id_context == "00ff"


def test_websocket_keys_default_like_nginx_and_are_validated() -> None:
    listener = load_config_data(GOOD).listeners[0]
    assert listener.routes[0].websocket is True
    assert listener.limits.websocket_idle_timeout == 3600.0
    assert listener.limits.max_upgraded_connections == 1000
    tuned = load_config_data(_with("listeners[0].limits.websocket_idle_timeout", "90s"))
    assert tuned.listeners[0].limits.websocket_idle_timeout == 90.0
    for path, value in [
        ("listeners[0].routes[0].websocket", "maybe"),
        ("listeners[0].limits.websocket_idle_timeout", "0s"),
        ("listeners[0].limits.max_upgraded_connections", 0),
    ]:
        problems = _problems(_with(path, value))
        assert len(problems) == 1 and problems[0].startswith(f"gp.yaml: {path}: "), problems
