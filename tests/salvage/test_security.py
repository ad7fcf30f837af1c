"""Security basics: secrets pass through from the environment and never show; no PII leaves."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
import redis
from typer.testing import CliRunner

from salvage.cli import app
from salvage.config import Settings
from salvage.connectors.broker import free_port
from salvage.sinks.redis_store import CaseStore, redact_url, redis_available
from tests.helpers import event, line, order_placed

KAFKA_SECRET = "kafka-Pa55-DO-NOT-LEAK"
REDIS_SECRET = "redis-Pa55-DO-NOT-LEAK"
COMMANDS = ["schemas", "generate", "run", "broker", "replay", "record", "demo"]


def test_kafka_sasl_tls_settings_pass_through(monkeypatch):
    for key, value in {
        "SALVAGE_KAFKA_BOOTSTRAP": "broker-1:9093",
        "SALVAGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "SALVAGE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "SALVAGE_KAFKA_SASL_USERNAME": "salvage",
        "SALVAGE_KAFKA_SASL_PASSWORD": KAFKA_SECRET,
        "SALVAGE_KAFKA_SSL_CA_LOCATION": "/etc/ssl/ca.pem",
        "SALVAGE_REDIS_PASSWORD": REDIS_SECRET,
    }.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert s.kafka.as_librdkafka_dict() == {
        "bootstrap.servers": "broker-1:9093",
        "log.connection.close": "false",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "salvage",
        "sasl.password": KAFKA_SECRET,
        "ssl.ca.location": "/etc/ssl/ca.pem",
    }
    # secrets are masked wherever the settings object is shown
    for shown in (repr(s), str(s), s.model_dump_json()):
        assert KAFKA_SECRET not in shown and REDIS_SECRET not in shown


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_never_shows_secrets(command, monkeypatch):
    monkeypatch.setenv("SALVAGE_KAFKA_SASL_PASSWORD", KAFKA_SECRET)
    monkeypatch.setenv("SALVAGE_REDIS_PASSWORD", REDIS_SECRET)
    monkeypatch.setenv("SALVAGE_REDIS_URL", f"redis://salvage:{REDIS_SECRET}@127.0.0.1:1/0")
    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert KAFKA_SECRET not in result.output and REDIS_SECRET not in result.output


def test_redact_url():
    assert redact_url(f"rediss://u:{REDIS_SECRET}@h:6380/1") == "rediss://u:***@h:6380/1"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.fixture
def protected_redis():
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not installed")
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--requirepass", REDIS_SECRET]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 5
    while not redis_available(url, REDIS_SECRET, timeout=0.2):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    yield url
    proc.terminate()
    proc.wait(timeout=5)


def _value(client: redis.Redis, key: bytes) -> object:
    kind = client.type(key).decode()
    read = {
        "hash": client.hgetall,
        "stream": client.xrange,
        "string": client.get,
        "list": lambda k: client.lrange(k, 0, -1),
        "set": client.smembers,
        "zset": lambda k: client.zrange(k, 0, -1),
    }
    return read[kind](key) if kind in read else client.dump(key)


PII = ["Jane Doe", "jane.doe@example.com", "221B Baker Street", "+44 20 7946 0958"]


@pytest.mark.integration
def test_password_protected_redis_and_no_pii_in_outputs_logs_or_store(
    protected_redis, tmp_path, salvage_cli
):
    assert not redis_available(protected_redis)  # the password is really required
    placed = order_placed(
        "O-pii",
        "2026-03-02T10:00:00Z",
        customer_name="Jane Doe",  # extra fields: tolerated, never carried on
        customer_email="jane.doe@example.com",
        shipping_address="221B Baker Street, London",
    )
    contact = event(
        "O-pii-c1",
        "support_contact",
        "O-pii",
        "2026-03-05T10:00:00Z",
        channel="email",
        intent="where_is_my_order",
        text="Hi, I'm Jane Doe (jane.doe@example.com, +44 20 7946 0958), 221B Baker Street: "
        "where is my parcel?",
    )
    later = order_placed("O-other", "2026-03-20T10:00:00Z", customer="c9")
    log = tmp_path / "pii.jsonl"
    log.write_bytes(b"".join(line(d) + b"\n" for d in (placed, contact, later)))
    out = tmp_path / "out"
    proc = salvage_cli(
        "run",
        "--input",
        str(log),
        "--out-dir",
        str(out),
        "--redis-url",
        protected_redis,
        env={"SALVAGE_REDIS_PASSWORD": REDIS_SECRET, "SALVAGE_KAFKA_SASL_PASSWORD": KAFKA_SECRET},
    )
    assert proc.wait(timeout=60) == 0, proc.err_path.read_text()
    logs = proc.out_path.read_text() + proc.err_path.read_text()
    assert "no Redis answers" not in logs  # it used the protected store
    store = CaseStore(protected_redis, REDIS_SECRET)
    doc = store.get("O-pii")
    store.close()
    assert doc is not None
    shown = [
        logs,
        (out / "interventions.jsonl").read_text(),
        (out / "lane_alerts.jsonl").read_text(),
        json.dumps(doc),
    ]
    for text in shown:
        assert REDIS_SECRET not in text and KAFKA_SECRET not in text
        for needle in PII:
            assert needle not in text, needle
    client = redis.Redis.from_url(protected_redis, password=REDIS_SECRET)
    try:
        for key in client.scan_iter():  # every key: case hashes, the review queue, anything
            blob = repr(_value(client, key))
            assert not any(needle in blob for needle in PII), key
    finally:
        client.close()


@pytest.mark.integration
def test_a_wrong_redis_password_stops_the_sinks_instead_of_buffering(protected_redis):
    """redis-py's AuthenticationError is a ConnectionError, but a wrong password is not an outage:
    the case-store and review-queue sinks raise it at once rather than buffering every write."""
    from salvage.sinks.redis_store import RedisCaseSink
    from salvage.sinks.review_queue import RedisReviewSink

    case_part = RedisCaseSink(protected_redis, password="wrong-password").build("out_cases", 0, 1)
    with pytest.raises(redis.exceptions.AuthenticationError):
        case_part.write_batch([("O1", 1, json.dumps({"order_id": "O1"}))])
    review_part = RedisReviewSink(protected_redis, password="wrong-password", refresh_s=0).build(
        "out_reviews", 0, 1
    )
    with pytest.raises(redis.exceptions.AuthenticationError):
        review_part.write_batch([{"trigger_id": "t1", "order_id": "O1"}])


@pytest.mark.integration
def test_run_stops_with_exit_2_when_the_configured_redis_refuses_the_password(
    protected_redis, tmp_path, salvage_cli
):
    """Issue 12: a wrong password used to print "no Redis answers" and run without the store."""
    log = tmp_path / "one.jsonl"
    log.write_bytes(line(order_placed("O1", "2026-03-02T10:00:00Z")) + b"\n")
    args = ["run", "--input", str(log), "--out-dir", str(tmp_path / "out")]
    env = {"SALVAGE_REDIS_URL": protected_redis, "SALVAGE_REDIS_PASSWORD": "wrong-password"}
    proc = salvage_cli(*args, env=env)
    assert proc.wait(timeout=60) == 2
    said = proc.out_path.read_text() + proc.err_path.read_text()
    assert "refused the credentials" in said and "--no-case-store" in said
    assert "wrong-password" not in said
    assert not (tmp_path / "out" / "interventions.jsonl").exists()  # nothing ran
    ok = salvage_cli(*args, "--no-case-store", env=env)
    assert ok.wait(timeout=60) == 0, ok.err_path.read_text()
    assert (tmp_path / "out" / "interventions.jsonl").exists()
