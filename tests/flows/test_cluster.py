"""Scale-out: ``salvage run`` as a Bytewax cluster of several processes (``--addresses``,
``--process-id``) gives byte-identical outputs to one process.

Real processes of the ``salvage`` CLI on free loopback ports, two input files (so each process can
own an input partition), a few corrupted lines (dead letters travel the cluster too). File outputs
have one partition owned by a worker of process 0, so they are written once, by process 0, whatever
``--out-dir`` the other processes are given.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from salvage.connectors.broker import free_port
from salvage.connectors.simulator import write_log
from salvage.runner import Cluster, ClusterError, resolve_cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ("interventions", "lane_alerts", "dead_letters", "model_events", "dispositions")
ENV = {"SALVAGE_REORDER_TOLERANCE_SECONDS": "3600", "SALVAGE_METRICS_PORT": "0"}


def _start(args: list[str], log: Path, extra_env: dict[str, str] | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SALVAGE_", "BYTEWAX_"))}
    env.update(ENV)
    env.update(extra_env or {})
    env["PYTHONPATH"] = str(REPO_ROOT)
    cmd = [sys.executable, "-c", "from salvage.cli import main; main()", "run", *args]
    with log.open("wb") as f:
        return subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=f, stderr=f
        )


def _run_args(inputs: list[Path], out: Path, *extra: str) -> list[str]:
    args = [a for p in inputs for a in ("--input", str(p))]
    return [
        *args,
        "--out-dir",
        str(out),
        "--no-summary",
        "--redis-url",
        "",
        "--shards",
        "4",
        *extra,
    ]


def _wait(procs: list[subprocess.Popen[bytes]], logs: list[Path], timeout: float = 90) -> None:
    try:
        for p, log in zip(procs, logs, strict=True):
            assert p.wait(timeout=timeout) == 0, log.read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def _outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / f"{name}.jsonl").read_bytes() for name in OUTPUTS}


def _assert_same(got: dict[str, bytes], want: dict[str, bytes]) -> None:
    """Byte-identical outputs. Dead letters are the exception by design: they skip the event-time
    ordering (a corrupt line has no event time), so letters from different input partitions
    interleave in arrival order; each partition's own letters keep their offset order."""
    for name in OUTPUTS:
        if name != "dead_letters":
            assert got[name] == want[name], name
    lines, ref = got["dead_letters"].splitlines(), want["dead_letters"].splitlines()
    assert sorted(lines) == sorted(ref)
    for source in {json.loads(x)["source"] for x in ref}:
        mine = [x for x in lines if json.loads(x)["source"] == source]
        assert mine == [x for x in ref if json.loads(x)["source"] == source], source


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """~14k events split by order id over two files, plus three corrupted lines."""
    root = tmp_path_factory.mktemp("cluster")
    log = root / "all.jsonl"
    write_log("launch-week-backlog", 1500, 7, log)
    parts: list[list[bytes]] = [[], []]
    for line in log.read_bytes().splitlines(keepends=True):
        order = line.split(b'"order_id":', 1)[1].split(b'"', 2)[1] if b'"order_id"' in line else b""
        parts[zlib.crc32(order) % 2].append(line)
    parts[0].insert(10, b"{not json\n")
    parts[1].insert(20, b'{"event_type": "order_placed"}\n')
    parts[1].append(b"\xff\xfe not utf-8\n")
    paths = [root / "a.jsonl", root / "b.jsonl"]
    for path, lines in zip(paths, parts, strict=True):
        path.write_bytes(b"".join(lines))
    return paths


@pytest.fixture(scope="module")
def single(inputs, tmp_path_factory) -> dict[str, bytes]:
    """The reference: one process, one worker, with the model shards a 2-process cluster has by
    default (SALVAGE_MODEL_SHARDS=0: one per process; results are deterministic per count)."""
    root = tmp_path_factory.mktemp("single")
    proc = _start(_run_args(inputs, root / "out"), root / "run.log", {"SALVAGE_MODEL_SHARDS": "2"})
    _wait([proc], [root / "run.log"])
    got = _outputs(root / "out")
    assert got["interventions"].count(b"\n") > 100
    assert got["dead_letters"].count(b"\n") == 3
    return got


def _start_cluster(
    inputs: list[Path],
    outs: list[Path],
    root: Path,
    workers: int,
    *extra: str,
    tag: str = "",
    env: dict[str, str] | None = None,
) -> tuple[list[subprocess.Popen[bytes]], list[Path]]:
    addresses = ",".join(f"127.0.0.1:{free_port()}" for _ in outs)
    logs = [root / f"proc{i}{tag}.log" for i in range(len(outs))]
    procs = []
    for i, out in enumerate(outs):
        args = ["--addresses", addresses, "--process-id", str(i), "-w", str(workers)]
        args += [a.replace("{i}", str(i)) for a in extra]
        procs.append(_start(_run_args(inputs, out, *args), logs[i], env))
    return procs, logs


def _cluster(inputs: list[Path], outs: list[Path], root: Path, workers: int) -> None:
    procs, logs = _start_cluster(inputs, outs, root, workers)
    _wait(procs, logs)
    assert "cluster: process 0 of 2" in logs[0].read_text()


def test_two_processes_sharing_an_out_dir_match_one_process_byte_for_byte(inputs, single, tmp_path):
    out = tmp_path / "out"
    _cluster(inputs, [out, out], tmp_path, workers=1)
    _assert_same(_outputs(out), single)


def test_two_processes_of_two_workers_write_only_on_process_0(inputs, single, tmp_path):
    out0, out1 = tmp_path / "out0", tmp_path / "out1"
    _cluster(inputs, [out0, out1], tmp_path, workers=2)
    _assert_same(_outputs(out0), single)
    assert not out1.exists(), "a process other than 0 must not open or create output files"


def test_cluster_killed_mid_stream_resumes_byte_identical(inputs, single, tmp_path):
    """SIGKILL both processes mid-stream, restart them with the same arguments: each resumes from
    its own share of the recovery partitions, and the outputs end byte-identical."""
    out = tmp_path / "out"
    rec = ("--recovery-dir", str(tmp_path / "db{i}"), "--snapshot-interval", "0.2")
    small = {"SALVAGE_SOURCE_BATCH_SIZE": "100"}  # output grows in many small steps, not 4 bursts
    procs, logs = _start_cluster(inputs, [out, out], tmp_path, 1, *rec, tag="a", env=small)
    target = single["interventions"].count(b"\n") // 3
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            path = out / "interventions.jsonl"
            if path.exists() and path.read_bytes().count(b"\n") >= target:
                break
            assert all(p.poll() is None for p in procs), logs[0].read_text()
            time.sleep(0.02)
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)
    assert (out / "interventions.jsonl").read_bytes() != single["interventions"], "not mid-stream"
    parts = [sorted(x.name for x in (tmp_path / f"db{i}").glob("part-*.sqlite3")) for i in (0, 1)]
    assert parts == [["part-0.sqlite3", "part-2.sqlite3"], ["part-1.sqlite3", "part-3.sqlite3"]]
    procs, logs = _start_cluster(inputs, [out, out], tmp_path, 1, *rec, tag="b")
    _wait(procs, logs)
    assert all("resuming from" in log.read_text() for log in logs)
    _assert_same(_outputs(out), single)

    # the models live in whichever process owns their recovery partition: export reads them all
    from salvage.models_export import export_models

    dirs = [tmp_path / "db0", tmp_path / "db1"]
    found = [_model_shards(d) for d in dirs]
    assert found == [1, 1], found  # a model shard per process (the default), each in its own
    summary = export_models(dirs, tmp_path / "export")
    assert list(summary["shards"]) == ["model-0000", "model-0001"]
    assert (tmp_path / "export" / "model-0001" / "abuse.json").is_file()


def _model_shards(db: Path) -> int:
    from salvage.models_export import ExportError, load_model_shards

    try:
        return len(load_model_shards(db))
    except ExportError:  # no model state in this process's share of the partitions
        return 0


def test_resolve_cluster_flags_and_bytewax_environment(tmp_path):
    assert resolve_cluster(env={}) == Cluster((), 0, 1)
    assert resolve_cluster("h:1;h:2", 1, 3, env={}) == Cluster(("h:1", "h:2"), 1, 3)
    env = {
        "BYTEWAX_ADDRESSES": "a:2101,b:2101,c:2101",
        "BYTEWAX_POD_NAME": "salvage-2",
        "BYTEWAX_STATEFULSET_NAME": "salvage",
        "BYTEWAX_WORKERS_PER_PROCESS": "2",
    }
    c = resolve_cluster(env=env)
    assert (c.process_id, c.processes, c.total_workers) == (2, 3, 6)
    hosts = tmp_path / "hosts"
    hosts.write_text("a:1\nb:1\n\n")
    c = resolve_cluster(env={"BYTEWAX_PROCESS_ID": "1", "BYTEWAX_HOSTFILE_PATH": str(hosts)})
    assert c.addresses == ("a:1", "b:1") and c.process_id == 1
    with pytest.raises(ClusterError, match="process-id is required"):  # never a silent solo run
        resolve_cluster(env={"BYTEWAX_HOSTFILE_PATH": str(hosts)})
    with pytest.raises(ClusterError, match="not a number"):
        resolve_cluster(env={"BYTEWAX_ADDRESSES": "a:1,b:1", "BYTEWAX_PROCESS_ID": "x"})
    assert resolve_cluster(["solo:1"], 0, None, env={}) == Cluster((), 0, 1)
    for bad in (
        dict(addresses="a:1,b:1"),  # no process id
        dict(addresses="a:1,b:1", process_id=2),
        dict(addresses="a1,b:1", process_id=0),
        dict(process_id=1),
    ):
        with pytest.raises(ClusterError):
            resolve_cluster(env={}, **bad)
