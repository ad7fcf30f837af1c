"""Shared fixtures: the embedded Kafka broker, Redis (shared or throwaway), unique names."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from salvage.connectors.broker import EmbeddedBroker, free_port
from salvage.sinks.redis_store import redis_available

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[EmbeddedBroker]:
    """One embedded Tansu broker for the whole session (tests use unique topic names)."""
    broker = EmbeddedBroker().start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka_conf(kafka_broker: EmbeddedBroker) -> dict[str, str]:
    """librdkafka client settings for the session broker (a fresh copy per test)."""
    return kafka_broker.client_config()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_name("orders")`` -> a topic/group/key-safe name unique to this test and call."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:60]

    def make(prefix: str) -> str:
        return f"{prefix}-{base}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared Redis (``SALVAGE_TEST_REDIS_URL``, default 127.0.0.1:6379/0); skips if down."""
    url = os.environ.get("SALVAGE_TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)
    if not redis_available(url, timeout=0.5):
        pytest.skip(f"no Redis answers at {url} (start redis-server or set SALVAGE_TEST_REDIS_URL)")
    return url


@pytest.fixture
def redis_key_prefix(redis_url: str, unique_name: Callable[[str], str]) -> Iterator[str]:
    """A key prefix private to this test; every key under it is deleted afterwards."""
    prefix = f"{unique_name('salvage-test')}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class RedisServer:
    """A throwaway ``redis-server`` (no persistence) on a fixed loopback port; restartable."""

    def __init__(self, binary: str, port: int) -> None:
        self.binary = binary
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 5.0) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no"]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while not redis_available(self.url, timeout=0.2):
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited early")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer")
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[[], RedisServer]]:
    """Start throwaway redis-servers on free ports; all are stopped after the test."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not installed")
    servers: list[RedisServer] = []

    def make() -> RedisServer:
        server = RedisServer(binary, free_port())
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


# ----------------------------------------------------------------------------- issue 6 fixtures
from sys import executable as sys_executable  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def salvage_cli(tmp_path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``salvage ARGS...`` as a real subprocess (cwd: the repo), env overrides applied.

    Metrics endpoint off, ``--out-dir`` under ``tmp_path`` unless given (``SALVAGE_OUT_DIR``), and
    ``SALVAGE_*`` from the caller's environment dropped, so a developer's shell settings cannot
    leak into a test. stdout/stderr go to files under ``tmp_path``.
    """
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        full = {k: v for k, v in os.environ.items() if not k.startswith("SALVAGE_")}
        full.update({"SALVAGE_METRICS_PORT": "0", "PYTHONPATH": REPO_ROOT})
        # `run` and `uplift` write and read --out-dir (default: out/ in the cwd, the repo): each
        # test its own, so tests running side by side (pytest -n) do not share one
        full["SALVAGE_OUT_DIR"] = str(tmp_path / "out")
        full.update(env or {})
        n = len(procs)
        out = (tmp_path / f"cli{n}.out").open("wb")
        err = (tmp_path / f"cli{n}.err").open("wb")
        cmd = [sys_executable, "-c", "from salvage.cli import main; main()", *args]
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=full, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        proc.out_path = tmp_path / f"cli{n}.out"  # type: ignore[attr-defined]
        proc.err_path = tmp_path / f"cli{n}.err"  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
