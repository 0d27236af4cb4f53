"""ListenSlots and slot_key with real sockets on loopback: ports, SO_REUSEPORT groups, closing."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from gateproxy.net.listen_slots import ListenError, ListenSlots, slot_key


@pytest.fixture
def slots() -> Iterator[ListenSlots]:
    held = ListenSlots()
    try:
        yield held
    finally:
        held.close_all()


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("name", "bind", "expected"),
    [
        ("public", "127.0.0.1:0", "public@127.0.0.1:0"),
        ("public", "127.0.0.1:8443", "127.0.0.1:8443"),
        ("renamed", "127.0.0.1:8443", "127.0.0.1:8443"),
        ("v6", "[::1]:0", "v6@[::1]:0"),
        ("v6", "[::1]:443", "[::1]:443"),
    ],
)
def test_slot_key(name: str, bind: str, expected: str) -> None:
    assert slot_key(name, bind) == expected


def test_slot_key_rejects_a_bad_bind() -> None:
    with pytest.raises(ValueError, match="expected 'host:port'"):
        slot_key("x", "localhost")


def test_port_zero_listeners_with_different_names_get_different_ports(slots: ListenSlots) -> None:
    a = slot_key("a", "127.0.0.1:0")
    b = slot_key("b", "127.0.0.1:0")
    slots.ensure(a, slots=1)
    slots.ensure(b, slots=1)
    host_a, port_a = slots.address(a)
    host_b, port_b = slots.address(b)
    assert host_a == host_b == "127.0.0.1"
    assert port_a != 0 and port_b != 0 and port_a != port_b
    assert sorted(slots.binds()) == sorted([a, b])


def test_two_slots_share_one_port_with_so_reuseport(slots: ListenSlots) -> None:
    key = slot_key("public", "127.0.0.1:0")
    socks = slots.ensure(key, slots=2)
    assert len(socks) == 2 and socks[0] is not socks[1]
    names = [s.getsockname() for s in socks]
    assert names[0] == names[1] and names[0][1] != 0
    for sock in socks:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert not sock.get_inheritable()
    assert [slots.fd(key, slot=i) for i in range(2)] == [s.fileno() for s in socks]
    assert slots.address(key) == names[0]


def test_a_connection_is_accepted_by_one_of_the_slots(slots: ListenSlots) -> None:
    key = slot_key("public", "127.0.0.1:0")
    socks = slots.ensure(key, slots=2)
    with socket.create_connection(slots.address(key), timeout=5) as client:
        readable, _, _ = select.select(socks, [], [], 5)
        assert len(readable) == 1
        server, peer = readable[0].accept()
        with server:
            assert peer == client.getsockname()
            client.sendall(b"ping")
            server.settimeout(5)
            assert server.recv(4) == b"ping"
        # the other slot has nothing queued
        assert select.select(socks, [], [], 0)[0] == []


def test_ensure_reuses_the_same_socket_objects(slots: ListenSlots) -> None:
    key = slot_key("public", "127.0.0.1:0")
    first = slots.ensure(key, slots=1)
    grown = slots.ensure(key, slots=3)
    again = slots.ensure(key, slots=3)
    fewer = slots.ensure(key, slots=2)
    assert grown[0] is first[0]
    assert all(x is y for x, y in zip(grown, again, strict=True))
    assert all(x is y for x, y in zip(grown[:2], fewer, strict=True))
    assert len({s.getsockname() for s in grown}) == 1
    assert all(s.fileno() != -1 for s in grown)  # asking for fewer closes nothing


def test_keep_only_closes_removed_keys_and_surplus_slots(slots: ListenSlots) -> None:
    kept = slot_key("kept", "127.0.0.1:0")
    shrunk = slot_key("shrunk", "127.0.0.1:0")
    gone = slot_key("gone", "127.0.0.1:0")
    kept_socks = slots.ensure(kept, slots=2)
    shrunk_socks = slots.ensure(shrunk, slots=3)
    gone_socks = slots.ensure(gone, slots=2)
    closed = slots.keep_only({kept: 2, shrunk: 1})
    assert closed == [gone]
    assert [s.fileno() == -1 for s in gone_socks] == [True, True]
    assert [s.fileno() == -1 for s in shrunk_socks] == [False, True, True]
    assert [s.fileno() == -1 for s in kept_socks] == [False, False]
    assert sorted(slots.binds()) == sorted([kept, shrunk])
    # a shrunk key grows again with a fresh socket on the same port
    regrown = slots.ensure(shrunk, slots=2)
    assert regrown[0] is shrunk_socks[0] and regrown[1] is not shrunk_socks[1]
    assert regrown[1].getsockname() == regrown[0].getsockname()
    with pytest.raises(KeyError):
        slots.address(gone)


def test_close_all_closes_everything() -> None:
    slots = ListenSlots()
    socks = slots.ensure(slot_key("a", "127.0.0.1:0"), slots=2)
    socks += slots.ensure(slot_key("b", "127.0.0.1:0"), slots=1)
    slots.close_all()
    assert all(s.fileno() == -1 for s in socks)
    assert slots.binds() == []


def test_a_fixed_port_somebody_else_listens_on_is_refused(slots: ListenSlots) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        bind = f"127.0.0.1:{port}"
        with pytest.raises(ListenError, match=f"cannot listen on {bind}: "):
            slots.ensure(slot_key("public", bind), slots=1)
    assert slots.binds() == []


def test_a_fixed_port_in_a_foreign_reuseport_group_is_refused(slots: ListenSlots) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        bind = f"127.0.0.1:{other.getsockname()[1]}"
        with pytest.raises(ListenError, match=f"cannot listen on {bind}"):
            slots.ensure(bind, slots=2)


def test_a_free_fixed_port_is_bound_under_its_bind(slots: ListenSlots) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as finder:
        finder.bind(("127.0.0.1", 0))
        port = finder.getsockname()[1]
    bind = f"127.0.0.1:{port}"
    key = slot_key("public", bind)
    assert key == bind
    socks = slots.ensure(key, slots=2)
    assert [s.getsockname() for s in socks] == [("127.0.0.1", port)] * 2


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_slots(slots: ListenSlots) -> None:
    key = slot_key("v6", "[::1]:0")
    socks = slots.ensure(key, slots=2)
    assert all(s.family == socket.AF_INET6 for s in socks)
    assert socks[0].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    host, port = slots.address(key)
    assert host == "::1" and port != 0
    assert socks[1].getsockname()[:2] == ("::1", port)


def test_a_reload_may_move_a_fixed_port_to_another_address_of_ours() -> None:
    slots = ListenSlots()
    try:
        first = slots.ensure("127.0.0.1:0", slots=1)  # port 0: find a free fixed port
        port = first[0].getsockname()[1]
        slots.close_all()
        slots.ensure(f"127.0.0.1:{port}", slots=1)
        moved = slots.ensure(f"0.0.0.0:{port}", slots=1)  # ours already: no "in use" refusal
        assert moved[0].getsockname() == ("0.0.0.0", port)
        assert slots.keep_only({f"0.0.0.0:{port}": 1}) == [f"127.0.0.1:{port}"]
    finally:
        slots.close_all()
