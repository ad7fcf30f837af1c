"""Expected failures (a service down, a bad argument) end with one clear line and exit code 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from salvage.cli import app
from salvage.connectors.broker import free_port

runner = CliRunner()
RESOLVE = ["review", "resolve", "--verdict", "deny", "--reviewer", "agent-1"]


def _dead_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def _expect_clear_failure(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.output, result.exception)
    err = result.stderr.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["review", "list", "--redis-url"],
        ["review", "claim", "--reviewer", "agent-1", "--redis-url"],
        [*RESOLVE, "1-0", "--print-only", "--redis-url"],
        ["explain", "O1", "--redis-url"],
    ],
    ids=["list", "claim", "resolve", "explain"],
)
def test_redis_down(args):
    _expect_clear_failure([*args, _dead_redis()], "Redis: Error 111 connecting")


def test_resolve_with_redis_down_says_the_review_is_untouched():
    args = [*RESOLVE, "1-0", "--kafka-bootstrap", "127.0.0.1:1", "--redis-url", _dead_redis()]
    _expect_clear_failure(args, "the review stays claimed")


@pytest.mark.parametrize("url", ["foo", ""])
def test_explain_with_an_unusable_redis_url(url):
    _expect_clear_failure(["explain", "O1", "--redis-url", url], "must be a redis://")


@pytest.mark.integration
def test_resolve_rejects_a_malformed_entry_id(redis_url):
    args = [*RESOLVE, "not-an-id", "--print-only", "--redis-url", redis_url]
    _expect_clear_failure(args, "'not-an-id' is not a review entry id")


def test_resolve_without_a_broker_refuses_unless_print_only(monkeypatch):
    monkeypatch.delenv("SALVAGE_KAFKA_BOOTSTRAP", raising=False)
    _expect_clear_failure([*RESOLVE, "1-0", "--redis-url", _dead_redis()], "--print-only")


@pytest.mark.integration
def test_record_with_the_broker_down():
    args = ["record", "--kafka-bootstrap", f"127.0.0.1:{free_port()}", "--timeout", "3"]
    _expect_clear_failure(args, "Kafka: Failed to get metadata")


def test_dashboards_push_to_nothing():
    args = ["dashboards", "push", "--url", f"http://127.0.0.1:{free_port()}"]
    _expect_clear_failure(args, "Connection refused")


def test_schemas_into_an_existing_file(tmp_path):
    out = tmp_path / "schemas"
    out.write_text("not a directory")
    _expect_clear_failure(["schemas", "--out", str(out)], f"--out {out} is a file")


def test_the_installed_entry_point_prints_one_line_and_no_traceback(salvage_cli):
    proc = salvage_cli("review", "list", "--redis-url", _dead_redis())
    assert proc.wait(timeout=60) == 2
    err = proc.err_path.read_text()
    assert err.strip().startswith("Redis: Error 111 connecting") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("head", "kind"), [(b"\x1f\x8b\x08\x00", "gzip"), (b"PAR1", "Parquet")])
def test_run_refuses_a_log_file_mode_cannot_read(tmp_path, head, kind):
    log = tmp_path / "events.jsonl"
    log.write_bytes(head + b"\x00" * 32)
    args = ["run", "--input", str(log), "--redis-url", "", "--metrics-port", "0", "--no-summary"]
    _expect_clear_failure(args, f"is {kind}; file mode reads plain JSONL")
    _expect_clear_failure(
        [*args[:2], str(tmp_path / "missing.jsonl"), *args[3:]], "no such event log"
    )


def test_the_out_dir_comes_from_salvage_out_dir_when_not_given(tmp_path):
    """`run` and `uplift` take --out-dir from SALVAGE_OUT_DIR (containers, parallel tests);
    an explicit --out-dir wins."""
    empty, other = tmp_path / "empty", tmp_path / "other"
    empty.mkdir()
    other.mkdir()
    result = runner.invoke(app, ["uplift"], env={"SALVAGE_OUT_DIR": str(empty)})
    assert result.exit_code == 2, result.output
    assert f"{empty}: no " in result.stderr
    result = runner.invoke(app, ["uplift", "--out-dir", str(other)], env={"SALVAGE_OUT_DIR": "x"})
    assert result.exit_code == 2, result.output
    assert f"{other}: no " in result.stderr
