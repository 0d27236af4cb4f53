"""Every ``gateproxy`` command line the docs print, run through the installed console script.

Where the docs print commands: the fenced code blocks and inline code spans of README.md,
certs/README.md and docs/**/*.md; the comments (their code spans, and lines that read as a
command) of config/*.yaml and config/*.service, and the unit's Exec lines. A command is a shell
segment whose program is gateproxy (by any path, or ``python -m gateproxy``). Synopsis notation is
expanded: ``[optional]`` parts are included, ``...`` dropped, each ``a|b`` alternative is run, and
an UPPERCASE placeholder gets a value chosen by the option before it.

Each command runs in a sandbox: ``tmp_path`` with copies of config/ and certs/ as the working
folder, absolute paths moved under it (``/etc/gateproxy/gateproxy.yaml`` is the example config, as
the README installs it), and every listening address of a config moved to a free port (the admin
default too), so nothing binds a fixed port. Then it must do what the docs say: ``check`` passes,
or prints exactly the output the docs show; ``gen-cert`` and ``keys new`` write their files;
``run`` and ``demo`` start, serve and stop cleanly; ``reload`` reloads a running gateproxy; a
bare mention of a sub-command (``gateproxy check``) has its ``--help``. A command no handler
knows, or a placeholder without a value, fails: a newly documented command needs one.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import yaml

from gateproxy.core.config import split_hostport
from tests.helpers.console import SCRIPT, demo_and_its_curl_line, message_lines
from tests.helpers.sockets import free_port
from tests.helpers.supervised import supervised_file

REPO = Path(__file__).resolve().parents[1]
PROGRAM = re.compile(r"^(?:\S*/)?gateproxy$")
PYTHON = re.compile(r"^(?:\S*/)?python[\d.]*$")
SHELL_OPERATORS = {"&&", "||", ";", "|"}
SUBCOMMANDS = {
    "run",
    "check",
    "reload",
    "demo",
    "gen-cert",
    "keys",
    "schema",
    "fleet",
    "--version",
    "--help",
    "-h",
}

# Values for the placeholders of a synopsis, by (option before it, placeholder).
PLACEHOLDERS = {
    ("-c", "FILE"): "config/minimal.yaml",
    ("--out", "FILE"): "out/ticket.key",
    ("--out", "DIR"): "out/certs",
    ("--host", "NAME"): "localhost",
    ("--name", "NAME"): "dev",
    ("--name", "STEM"): "dev",
    ("--days", "N"): "30",
    ("--port", "N"): "0",
    ("--admin-port", "N"): "0",
    ("--pid", "N"): "{pid}",  # the reload handler puts in the running gateproxy's pid
    ("--admin", "ADDRESS"): "{admin}",  # the fleet status handler: the running admin address
}
# Files the docs name without shipping them, as the docs describe them.
FIXTURES = {
    "bad.yaml": """\
listeners:
  - name: public
    bind: "127.0.0.1:0"
    tls:
      certificates: [{cert: certs/localhost.pem, key: certs/localhost-key.pem}]
      session_cache: {max_entries: -5}
    routes: [{path_prefix: /, upstream: ap}]
upstreams:
  app: {servers: ["127.0.0.1:8080"]}
admin: null
""",
}
# Absolute paths the docs install a shipped file to (README, "systemd").
SEEDS = {"/etc/gateproxy/gateproxy.yaml": REPO / "config" / "gateproxy.example.yaml"}


# --- extraction ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snippet:
    where: str  # "README.md:32"
    text: str
    is_code: bool  # False: comment prose, where only a known sub-command makes it a command
    output: tuple[str, ...] = ()  # the lines a `$ ` prompt line is shown to print


@dataclass(frozen=True)
class DocCommand:
    argv: tuple[str, ...]  # after the program; placeholders still in
    python_m: bool  # printed as `python -m gateproxy ...`
    output: tuple[str, ...]
    where: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where[0]}: gateproxy {shlex.join(self.argv)}"


def doc_files() -> list[Path]:
    """Every file whose printed commands are covered."""
    files = [REPO / "README.md", REPO / "certs" / "README.md"]
    files += sorted((REPO / "docs").glob("**/*.md"))
    files += sorted((REPO / "config").glob("*.yaml")) + sorted((REPO / "config").glob("*.service"))
    return [f for f in files if f.exists()]


def snippets(path: Path) -> Iterator[Snippet]:
    text = path.read_text(encoding="utf-8")
    name = str(path.relative_to(REPO))
    if path.suffix == ".md":
        yield from _markdown_snippets(text, name)
    else:
        yield from _config_snippets(text, name)


def _markdown_snippets(text: str, name: str) -> Iterator[Snippet]:
    lines = text.splitlines()
    prose: list[tuple[int, str]] = []
    fence: list[tuple[int, str]] | None = None
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith(("```", "~~~")):
            if fence is None:
                fence = []
            else:
                yield from _fenced_snippets(fence, name)
                fence = None
        elif fence is not None:
            fence.append((number, line))
        else:
            prose.append((number, line))
    yield from _spans(prose, name)


def _fenced_snippets(block: list[tuple[int, str]], name: str) -> Iterator[Snippet]:
    if not any(line.startswith("$ ") for _n, line in block):
        for number, line in block:
            yield Snippet(f"{name}:{number}", line, is_code=True)
        return
    for i, (number, line) in enumerate(block):  # a session: `$ command`, then what it prints
        if line.startswith("$ "):
            output = []
            for _n, after in block[i + 1 :]:
                if after.startswith("$ "):
                    break
                output.append(after)
            yield Snippet(f"{name}:{number}", line[2:], is_code=True, output=tuple(output))


def _spans(lines: list[tuple[int, str]], name: str) -> Iterator[Snippet]:
    """Inline code spans, also those wrapped over two lines."""
    text = "\n".join(line for _n, line in lines)
    for match in re.finditer(r"`([^`]+)`", text):
        number = lines[text.count("\n", 0, match.start())][0]
        yield Snippet(f"{name}:{number}", " ".join(match.group(1).split()), is_code=True)


def _config_snippets(text: str, name: str) -> Iterator[Snippet]:
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{name}:{number}"
        exec_line = re.match(r"^\s*Exec\w+=[-@:+!]*(.*)$", line)
        if exec_line:
            yield Snippet(where, exec_line.group(1), is_code=True)
        comment = re.search(r"(?:^|\s)[#;]\s?(.*)$", line)
        if comment:
            yield Snippet(where, comment.group(1), is_code=False)
            yield from _spans([(number, comment.group(1))], name)


def commands_in(snippet: Snippet) -> Iterator[tuple[bool, list[str]]]:
    """``(python_m, argv)`` of each gateproxy command in a snippet (a shell line)."""
    text = snippet.text.replace("\\|", "|")  # an escaped pipe in a markdown table cell
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:  # prose with an apostrophe, say
        tokens = text.split()
    segment: list[str] = []
    for token in [*tokens, ";"]:
        if token not in SHELL_OPERATORS:
            segment.append(token)
            continue
        found = _program_argv(segment)
        segment = []
        if found is None or not found[1]:
            continue  # not gateproxy, or only its name (a user, a unit, a folder)
        if snippet.is_code or found[1][0] in SUBCOMMANDS:
            yield found


def _program_argv(segment: list[str]) -> tuple[bool, list[str]] | None:
    if segment and PROGRAM.match(segment[0]):
        return False, segment[1:]
    if len(segment) >= 3 and PYTHON.match(segment[0]) and segment[1:3] == ["-m", "gateproxy"]:
        return True, segment[3:]
    return None


def expand_synopsis(argv: list[str]) -> list[list[str]]:
    """``[--pid N]`` -> ``--pid N``; ``NAME...`` -> ``NAME``; ``a|b`` -> one argv for each."""
    flat = [t.replace("[", "").replace("]", "").removesuffix("...") for t in argv]
    variants: list[list[str]] = [[]]
    for token in (t for t in flat if t):
        choices = token.split("|") if "|" in token and not token.startswith("-") else [token]
        variants = [[*v, choice] for v in variants for choice in choices]
    return variants


def doc_commands() -> list[DocCommand]:
    """Every printed command, once, with every place that prints it."""
    found: dict[tuple[bool, tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for path in doc_files():
        for snippet in snippets(path):
            for python_m, argv in commands_in(snippet):
                for variant in expand_synopsis(argv):
                    key = (python_m, tuple(variant), snippet.output)
                    found.setdefault(key, []).append(snippet.where)
    return [
        DocCommand(argv, python_m, output, tuple(where))
        for (python_m, argv, output), where in found.items()
    ]


DOC_COMMANDS = doc_commands()


# --- the sandbox --------------------------------------------------------------------------------


class Sandbox:
    """A working folder where the printed commands can run (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.copytree(REPO / "config", root / "config")
        shutil.copytree(REPO / "certs", root / "certs")
        for config in (root / "config").glob("*.yaml"):
            _free_ports(config)
        for name, text in FIXTURES.items():
            (root / name).write_text(text)

    def argv(self, command: DocCommand) -> list[str]:
        """The command's arguments with placeholders filled in and absolute paths moved here."""
        argv: list[str] = []
        for token in command.argv:
            if re.fullmatch(r"[A-Z][A-Z_]*", token):
                key = (argv[-1] if argv else "", token)
                assert key in PLACEHOLDERS, f"{command}: no value for {token} after {key[0]!r}"
                token = PLACEHOLDERS[key]
            option, sep, value = token.partition("=")
            if token.startswith("/"):
                token = self.path(token)
            elif sep and option.startswith("--") and value.startswith("/"):
                token = f"{option}={self.path(value)}"
            argv.append(token)
        return argv

    def path(self, absolute: str) -> str:
        moved = self.root / absolute.lstrip("/")
        moved.parent.mkdir(parents=True, exist_ok=True)
        seed = SEEDS.get(absolute)
        if seed is not None and not moved.exists():
            shutil.copy(seed, moved)
            _free_ports(moved)
            certs = (moved.parent / ".." / "certs").resolve()  # its relative certificate paths
            if not certs.exists():
                shutil.copytree(REPO / "certs", certs)
        return str(moved)

    def file(self, name: str) -> Path:
        return self.root / name


def _free_ports(config: Path) -> None:
    """Move every fixed listening address of ``config`` (and the default admin one) to a free
    port, so that a test never binds a fixed port."""
    data = yaml.safe_load(config.read_text())
    for listener in data.get("listeners") or []:
        listener["bind"] = _free(listener["bind"])
    admin = data.get("admin", {"bind": "127.0.0.1:9901"})
    if admin is not None:
        data["admin"] = {**admin, "bind": _free(admin.get("bind", "127.0.0.1:9901"))}
    config.write_text(yaml.safe_dump(data, sort_keys=False))


def _free(bind: str) -> str:
    _host, port = split_hostport(bind)
    return bind if port == 0 else f"127.0.0.1:{free_port()}"


# --- handlers: what each printed command must do ------------------------------------------------


async def _gateproxy(
    command: DocCommand, argv: list[str], sandbox: Sandbox
) -> subprocess.CompletedProcess[str]:
    program = [sys.executable, "-m", "gateproxy"] if command.python_m else [str(SCRIPT)]
    done = await trio.run_process(
        [*program, *argv], cwd=sandbox.root, capture_stdout=True, capture_stderr=True, check=False
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def _after(argv: list[str], option: str) -> str:
    assert option in argv, f"expected {option} in {argv}"
    return argv[argv.index(option) + 1]


async def _check(command: DocCommand, argv: list[str], sandbox: Sandbox) -> None:
    done = await _gateproxy(command, argv, sandbox)
    if command.output:  # the docs show what it prints: exactly that
        assert message_lines(done.stdout + done.stderr) == list(command.output)
    else:
        assert done.returncode == 0, done.stderr
        assert "OK" in done.stdout


async def _gen_cert(command: DocCommand, argv: list[str], sandbox: Sandbox) -> None:
    done = await _gateproxy(command, argv, sandbox)
    assert done.returncode == 0, done.stderr
    written = re.findall(r"^(?:certificate|key): +(\S+)$", done.stdout, re.MULTILINE)
    assert len(written) == 2, done.stdout
    assert all((sandbox.root / name).stat().st_size > 0 for name in written)


async def _keys_new(command: DocCommand, argv: list[str], sandbox: Sandbox) -> None:
    out = sandbox.root / _after(argv, "--out")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = await _gateproxy(command, argv, sandbox)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.stat().st_size > 0


async def _run(command: DocCommand, argv: list[str], sandbox: Sandbox) -> None:
    config = sandbox.root / _after(argv, "-c")
    program = [sys.executable, "-m", "gateproxy"] if command.python_m else [str(SCRIPT)]
    async with supervised_file(config, command=[*program, *argv], cwd=sandbox.root) as gp:
        assert gp.started["listeners"]  # then SIGTERM: it must drain and exit 0


async def _reload(command: DocCommand, argv: list[str], sandbox: Sandbox) -> None:
    config = sandbox.root / _after(argv, "-c")
    data = yaml.safe_load(config.read_text())
    data["pid_file"] = str(sandbox.root / "gateproxy.pid")
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    async with supervised_file(config, command=[str(SCRIPT), "run", "-c", str(config)]) as gp:
        argv = [token.replace("{pid}", str(gp.started["pid"])) for token in argv]
        done = await _gateproxy(command, argv, sandbox)
        assert done.returncode == 0, done.stderr
        assert "reload signalled" in done.stdout
        assert (await gp.wait_event("reloaded"))["generation"] == 2


async def _fleet_status(command: DocCommand, argv: list[str], sandbox: Sandbox) -> None:
    """Asks a running gateproxy of the config (its listeners take no fleet keys: it says so)."""
    config = sandbox.root / _after(argv, "-c")
    async with supervised_file(config, command=[str(SCRIPT), "run", "-c", str(config)]) as gp:
        host, port = gp.admin
        argv = [token.replace("{admin}", f"{host}:{port}") for token in argv]
        done = await _gateproxy(command, argv, sandbox)
    assert done.returncode == 0, done.stderr
    if "--json" in argv:
        assert json.loads(done.stdout) == {}
    else:
        assert done.stdout.startswith("no listener takes its ticket keys from the fleet")


async def _demo(command: DocCommand, argv: list[str], sandbox: Sandbox) -> None:
    safe = [t for i, t in enumerate(argv) if not _is_port_option(argv, i)]
    program = [sys.executable, "-m", "gateproxy"] if command.python_m else [str(SCRIPT)]
    status, result = await demo_and_its_curl_line(
        [*program, *safe, "--port", "0", "--admin-port", "0"]
    )
    assert status == 0
    assert result.returncode == 0, result.stderr


def _is_port_option(argv: list[str], i: int) -> bool:
    options = ("--port", "--admin-port")
    return argv[i].startswith(options) or (i > 0 and argv[i - 1] in options)


async def _schema(command: DocCommand, argv: list[str], sandbox: Sandbox) -> None:
    done = await _gateproxy(command, argv, sandbox)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["title"] == "gateproxy configuration"


async def _about(command: DocCommand, argv: list[str], sandbox: Sandbox) -> None:
    done = await _gateproxy(command, argv, sandbox)
    assert done.returncode == 0, done.stderr
    assert re.match(r"(gateproxy \d|usage: gateproxy)", done.stdout), done.stdout


async def _mention(command: DocCommand, argv: list[str], sandbox: Sandbox) -> None:
    """A sub-command named in prose (`gateproxy check`): it exists and has its --help."""
    done = await _gateproxy(command, [*argv, "--help"], sandbox)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: gateproxy {' '.join(argv)} "), done.stdout


Handler = Callable[[DocCommand, list[str], Sandbox], Awaitable[None]]
HANDLERS: dict[str, Handler] = {
    "check": _check,
    "gen-cert": _gen_cert,
    "keys new": _keys_new,
    "fleet status": _fleet_status,
    "run": _run,
    "reload": _reload,
    "demo": _demo,
    "schema": _schema,
    "--version": _about,
    "--help": _about,
    "-h": _about,
}


def handler_for(command: DocCommand) -> Handler:
    argv = command.argv
    is_mention = not any(t.startswith("-") for t in argv) and argv[0] != "demo"
    if is_mention and argv[0] in SUBCOMMANDS:
        return _mention
    name = " ".join(argv[:2]) if argv[0] in ("keys", "fleet") else argv[0]
    assert name in HANDLERS, f"{command}: no handler for 'gateproxy {name}': add one to {__name__}"
    return HANDLERS[name]


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", DOC_COMMANDS, ids=str)
async def test_printed_command_does_what_the_docs_say(command: DocCommand, tmp_path: Path) -> None:
    sandbox = Sandbox(tmp_path)
    await handler_for(command)(command, sandbox.argv(command), sandbox)


def test_every_printed_command_has_a_handler_and_values_for_its_placeholders(
    tmp_path: Path,
) -> None:
    sandbox = Sandbox(tmp_path)
    problems = []
    for command in DOC_COMMANDS:
        try:
            handler_for(command)
            sandbox.argv(command)
        except AssertionError as exc:
            problems.append(str(exc).splitlines()[0])
    assert problems == []


def test_the_known_printed_commands_are_found() -> None:
    """The extraction itself works: the commands the docs are known to print are all found."""
    found = {(c.argv, c.where[0].split(":")[0]) for c in DOC_COMMANDS}
    for argv, where in [
        (("demo",), "README.md"),
        (("check", "-c", "config/minimal.yaml"), "README.md"),
        (("run", "-c", "config/minimal.yaml"), "README.md"),
        (("gen-cert", "--host", "example.com", "--out", "certs/"), "README.md"),
        (("keys", "new", "--format", "haproxy", "--out", "FILE"), "README.md"),
        (("check", "-c", "bad.yaml"), "README.md"),
        (("reload", "-c", "FILE"), "README.md"),
        (
            ("gen-cert", "--host", "localhost", "--host", "127.0.0.1", "--out", "certs"),
            "certs/README.md",
        ),
        (("check", "-c", "/etc/gateproxy/gateproxy.yaml"), "config/gateproxy.service"),
        (("run", "-c", "/etc/gateproxy/gateproxy.yaml"), "config/gateproxy.service"),
    ]:
        assert (argv, where) in found, (argv, where)


@pytest.mark.parametrize(
    ("text", "is_code", "expected"),
    [
        ("python3 -m venv .venv && .venv/bin/gateproxy demo", True, [(False, ["demo"])]),
        (
            "gateproxy keys new --out FILE   # mode 0600",
            True,
            [(False, ["keys", "new", "--out", "FILE"])],
        ),
        ("python -m gateproxy --version", True, [(True, ["--version"])]),
        ("ln -s /opt/gateproxy/bin/gateproxy /usr/local/bin/gateproxy", True, []),
        ("cli.py     gateproxy run | check | reload", True, []),
        ("useradd --system gateproxy", True, []),
        ("gateproxy/", True, []),
        ("gateproxy as a systemd service.", False, []),
        (
            "gateproxy check -c FILE before a reload",
            False,
            [(False, ["check", "-c", "FILE", "before", "a", "reload"])],
        ),
    ],
)
def test_commands_are_told_from_prose(
    text: str, is_code: bool, expected: list[tuple[bool, list[str]]]
) -> None:
    assert list(commands_in(Snippet("x:1", text, is_code=is_code))) == expected


def test_synopsis_notation_is_expanded() -> None:
    argv = shlex.split("gen-cert --host NAME [--host NAME]... --out DIR [--rsa]")
    assert expand_synopsis(argv) == [
        ["gen-cert", "--host", "NAME", "--host", "NAME", "--out", "DIR", "--rsa"]
    ]
    assert expand_synopsis(["keys", "new", "--format", "nginx|haproxy"]) == [
        ["keys", "new", "--format", "nginx"],
        ["keys", "new", "--format", "haproxy"],
    ]


def test_a_prompted_session_keeps_what_it_prints() -> None:
    text = "```\n$ gateproxy check -c bad.yaml\nbad.yaml: a: b\n$ gateproxy --version\n```\n"
    found = list(_markdown_snippets(text, "x.md"))
    assert found == [
        Snippet("x.md:2", "gateproxy check -c bad.yaml", True, ("bad.yaml: a: b",)),
        Snippet("x.md:4", "gateproxy --version", True, ()),
    ]
