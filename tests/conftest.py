"""Shared fixtures: a per-run certificate authority and leaf certificates written to files.

Hypothesis profiles: "ci" (50 examples, no deadline; the default) and "deep" (1000 examples),
chosen with the HYPOTHESIS_PROFILE environment variable.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import trustme
from hypothesis import settings


def pytest_configure(config: pytest.Config) -> None:
    settings.register_profile("ci", max_examples=50, deadline=None)
    settings.register_profile("deep", max_examples=1000, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


class CertPaths(NamedTuple):
    """A leaf certificate (with its chain) and its private key, as PEM files."""

    cert: Path
    key: Path
    leaf: trustme.LeafCert


def _write_leaf(directory: Path, leaf: trustme.LeafCert) -> CertPaths:
    directory.mkdir(parents=True, exist_ok=True)
    cert = directory / "cert.pem"
    key = directory / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for blob in leaf.cert_chain_pems[1:]:
        blob.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    return CertPaths(cert=cert, key=key, leaf=leaf)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A throwaway certificate authority for this test run."""
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_pem_path(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA certificate as a PEM file (for curl --cacert, openssl -CAfile, ...)."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def server_cert(ca: trustme.CA, tmp_path: Path) -> CertPaths:
    """A leaf for localhost, 127.0.0.1 and ::1: ``.cert`` (chain) and ``.key`` PEM paths."""
    return _write_leaf(tmp_path / "server", ca.issue_cert("localhost", "127.0.0.1", "::1"))


@pytest.fixture
def second_cert(ca: trustme.CA, tmp_path: Path) -> CertPaths:
    """A second leaf, for ``example.test`` only (SNI tests)."""
    return _write_leaf(tmp_path / "second", ca.issue_cert("example.test"))


@pytest.fixture
def rsa_server_cert(ca: trustme.CA, tmp_path: Path) -> CertPaths:
    """An RSA-2048 leaf for the same names as ``server_cert`` (key-type choice tests)."""
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1", key_type=trustme.KeyType.RSA)
    return _write_leaf(tmp_path / "server-rsa", leaf)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze what collection made (modules, fixtures, hypothesis' tables): the collection after
    each test then walks only what the tests make, not the whole heap every time."""
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Leaked sockets warn in the test that leaked them, not in a later one."""
    yield
    gc.collect()
