"""The deployment files agree with the code and with each other (no Docker engine needed).

docker-compose.yml, Dockerfile, .dockerignore, deploy/prometheus.yml and deploy/alertmanager.yml
are parsed as data: every SALVAGE_* variable is a real setting, every mounted host path exists,
ports and service names line up across Compose, Prometheus, Alertmanager and Grafana's
provisioning, and promtool (amtool when installed) accepts the configs.
"""

from __future__ import annotations

import posixpath
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from salvage.config import FLAT, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROM = ROOT / "deploy" / "prometheus.yml"
AM = ROOT / "deploy" / "alertmanager.yml"

# The services issue 7 asks for, by role -> compose service name.
SERVICES = {
    "kafka": "kafka",
    "topic initialiser": "kafka-init",
    "redis": "redis",
    "pipeline": "salvage",
    "prometheus": "prometheus",
    "alertmanager": "alertmanager",
    "grafana": "grafana",
}
PIPELINE = SERVICES["pipeline"]

_INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _interpolate(value: object) -> str:
    """Compose-style ``${VAR:-default}`` with an empty environment: the default (or '')."""
    return _INTERP.sub(lambda m: m.group(3) or "", str(value)).replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def prom() -> dict:
    return yaml.safe_load(PROM.read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: _interpolate(v) for k, v in env.items()}


def _binds(service: dict) -> list[tuple[str, str]]:
    """(host path relative to the repo, container path) for every bind mount of a service."""
    out = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            if vol.get("type") == "bind":
                out.append((vol["source"], vol["target"]))
            continue
        src, dst = vol.split(":")[:2]
        if src.startswith((".", "/", "~")):
            out.append((src, dst))
    return out


def _host_path(service: dict, container_path: str) -> Path | None:
    """Where ``container_path`` comes from in the repo, via the longest matching bind mount."""
    best = None
    for src, dst in _binds(service):
        dst = dst.rstrip("/")
        if container_path == dst or container_path.startswith(dst + "/"):
            if best is None or len(dst) > len(best[1]):
                best = (src, dst)
    if best is None:
        return None
    rest = container_path[len(best[1]) :].lstrip("/")
    return (ROOT / best[0] / rest).resolve() if rest else (ROOT / best[0]).resolve()


def _flag(command: list[str], name: str) -> str | None:
    """Value of ``--name=value`` or ``--name value`` in a command list."""
    for i, arg in enumerate(command):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(command):
            return command[i + 1]
    return None


def _port(hostport: str, default: int) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return (host, int(port)) if host else (hostport, default)


def test_issue_services_exist(services):
    missing = {role: name for role, name in SERVICES.items() if name not in services}
    assert not missing, f"docker-compose.yml lacks {missing}"


def test_salvage_variables_are_settings(services):
    """Every SALVAGE_* name anywhere in the compose file (environment keys, ${...} interpolations,
    comments) is a setting of salvage.config.Settings (a flat name, prefix SALVAGE_,
    case-insensitive)."""
    fields = set(FLAT)
    names = set(re.findall(r"SALVAGE_[A-Za-z0-9_]+", COMPOSE.read_text()))
    for svc in services.values():
        names |= {k for k in _env(svc) if k.upper().startswith("SALVAGE_")}
    assert names, "the compose file configures the pipeline through SALVAGE_* variables"
    unknown = sorted(n for n in names if n[len("SALVAGE_") :].lower() not in fields)
    assert not unknown, f"not fields of salvage.config.Settings: {unknown}"
    # Values the pipeline service sets must also validate.
    env = {k[len("SALVAGE_") :].lower(): v for k, v in _env(services[PIPELINE]).items()}
    Settings.model_validate({k: v for k, v in env.items() if k in fields})


def test_metrics_listen_on_all_interfaces(services):
    """Prometheus scrapes the pipeline over the compose network: /metrics must not bind loopback
    (SALVAGE_METRICS_HOST; the default stays 127.0.0.1 for the host CLI)."""
    assert FLAT["metrics_host"] == ("metrics", "host")
    assert _env(services[PIPELINE]).get("SALVAGE_METRICS_HOST") == "0.0.0.0"


def test_mounted_host_paths_exist(services, compose):
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for src, dst in _binds(svc):
            assert (ROOT / src).exists(), f"{name}: mounted {src} -> {dst} is not in the repo"
        for vol in svc.get("volumes") or []:
            src = vol["source"] if isinstance(vol, dict) else vol.split(":")[0]
            if not src.startswith((".", "/", "~")):
                assert src in declared, f"{name}: named volume {src} is not declared"


def test_images_pinned(services):
    for name, svc in services.items():
        image = svc.get("image")
        assert image or "build" in svc, name
        if image and "build" not in svc:
            tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
            assert tag and tag != "latest", f"{name}: pin {image} to a version"


def test_kafka_is_kraft_and_bootstraps_agree(services):
    env = _env(services["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in " ".join(env)
    assert services["kafka"]["image"].split(":")[0] in {"apache/kafka", "bitnami/kafka"}
    advertised = {
        listener.split("://", 1)[1] for listener in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    bootstrap = _env(services[PIPELINE])["SALVAGE_KAFKA_BOOTSTRAP"]
    assert set(bootstrap.split(",")) <= advertised
    assert bootstrap.split(":")[0] == "kafka"
    assert _env(services[SERVICES["topic initialiser"]])["BOOTSTRAP"] in advertised


def test_topic_initialiser_creates_every_topic(services):
    """All SALVAGE_TOPIC_* defaults (inputs and outputs) are created, with the pipeline's
    partition count, before the pipeline starts."""
    init = services[SERVICES["topic initialiser"]]
    env = _env(init)
    s = Settings()
    wanted = set(s.topics.inputs().values()) | set(s.topics.outputs())
    missing = wanted - set(env["TOPICS"].split())
    assert not missing, f"kafka-init does not create {sorted(missing)}"
    assert env["PARTITIONS"] == _env(services[PIPELINE])["SALVAGE_TOPIC_PARTITIONS"]
    assert "--if-not-exists" in "".join(init["command"])
    assert init.get("restart", "no") == "no"


def test_depends_on_conditions(services):
    """service_healthy targets have a healthcheck, service_completed_successfully targets are
    one-shots; the pipeline waits for Kafka, the topics and Redis."""
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: use the long depends_on form with conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            cond = spec["condition"]
            if cond == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
            else:
                assert cond == "service_completed_successfully", (name, dep, cond)
                assert services[dep].get("restart", "no") == "no"
    deps = services[PIPELINE]["depends_on"]
    assert deps["kafka"]["condition"] == "service_healthy"
    assert deps["redis"]["condition"] == "service_healthy"
    assert deps[SERVICES["topic initialiser"]]["condition"] == "service_completed_successfully"
    for name in ("kafka", "redis", PIPELINE, "prometheus", "alertmanager", "grafana"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"


def test_pipeline_follows_with_recovery_on_a_volume(services, compose):
    svc = services[PIPELINE]
    assert svc["build"]["context"] == "."
    assert (ROOT / svc["build"].get("dockerfile", "Dockerfile")).is_file()
    cmd = [str(c) for c in svc["command"]]
    assert cmd[0] == "run" and "--follow" in cmd and "--input" not in cmd
    workers = int(_flag(cmd, "--workers") or 1)
    assert int(_env(svc)["SALVAGE_SHARDS"]) >= workers
    recovery = _flag(cmd, "--recovery-dir")
    assert recovery
    named = [
        v.split(":")[0]
        for v in svc["volumes"]
        if isinstance(v, str) and v.split(":")[1] == recovery
    ]
    assert named and named[0] in compose["volumes"], "the recovery dir must be a named volume"
    assert svc.get("stop_grace_period"), "give the SIGTERM drain time to snapshot"


def test_dockerfile_and_dockerignore():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"pip install .*(/tmp/src|\s\.)", text)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r'^ENTRYPOINT \["salvage"\]', text, re.M)
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    # Everything `pip install .` needs reaches the build context.
    pyproject = (ROOT / "pyproject.toml").read_text()
    listed = re.search(r"^packages = \[(.*?)\]", pyproject, re.S | re.M)
    assert listed, "pyproject.toml lists the packages"
    # salvage.flows is the repo's flows/ folder (salvage/flows is a symlink to it)
    packages = [p.rsplit(".", 1)[-1] for p in re.findall(r'"([^"]+)"', listed.group(1))]
    assert "salvage" in packages and "flows" in packages
    for needed in ["pyproject.toml", "README.md", *packages]:
        assert needed not in ignored, f".dockerignore drops {needed}"
    assert {".venv", ".git", "tests"} <= ignored


def test_prometheus_scrapes_the_pipeline_metrics_port(services, prom):
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert "salvage" in jobs, "the alert rules assume scrape job 'salvage'"
    targets = [t for sc in jobs["salvage"]["static_configs"] for t in sc["targets"]]
    port = int(_env(services[PIPELINE]).get("SALVAGE_METRICS_PORT", Settings().metrics_port))
    assert port > 0
    assert targets == [f"{PIPELINE}:{port}"]
    exposed = re.search(r"^EXPOSE\s+(\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert exposed and int(exposed.group(1)) == port
    # Grafana's datasource declares the scrape interval.
    ds = yaml.safe_load((ROOT / "dashboards/provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ][0]
    assert prom["global"]["scrape_interval"] == ds["jsonData"]["timeInterval"]


def test_prometheus_alerting_targets_alertmanager(services, prom):
    targets = [
        t
        for am in prom["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    ]
    listen = _flag(services["alertmanager"].get("command") or [], "--web.listen-address")
    _, am_port = _port(listen or ":9093", 9093)
    assert targets == [f"alertmanager:{am_port}"]


def test_prometheus_rule_files_resolve_in_repo_and_container(services, prom):
    svc = services["prometheus"]
    config_in_container = _flag(svc["command"], "--config.file")
    assert _host_path(svc, config_in_container) == PROM.resolve(), "config mount"
    rules = ROOT / "dashboards/alerts/salvage.rules.yml"
    assert prom["rule_files"], "load the Salvage alert rules"
    for rule in prom["rule_files"]:
        assert (PROM.parent / rule).resolve() == rules.resolve(), f"{rule} from deploy/"
        in_container = posixpath.normpath(
            posixpath.join(posixpath.dirname(config_in_container), rule)
        )
        assert _host_path(svc, in_container) == rules.resolve(), f"{in_container} in container"


def test_grafana_provisioning_mounts_and_datasource(services):
    svc = services["grafana"]
    provisioning = "/etc/grafana/provisioning"
    ds_dir = _host_path(svc, f"{provisioning}/datasources")
    dash_dir = _host_path(svc, f"{provisioning}/dashboards")
    assert ds_dir == (ROOT / "dashboards/provisioning/datasources").resolve()
    assert dash_dir == (ROOT / "dashboards/provisioning/dashboards").resolve()
    for provider_file in dash_dir.glob("*.yml"):
        for provider in yaml.safe_load(provider_file.read_text())["providers"]:
            path = provider["options"]["path"]
            assert _host_path(svc, path) == (ROOT / "dashboards/json").resolve(), path
    assert list((ROOT / "dashboards/json").glob("*.json"))
    # The datasource URL points at the prometheus service and the port it listens on.
    (ds,) = yaml.safe_load((ds_dir / "prometheus.yml").read_text())["datasources"]
    url = urlsplit(ds["url"])
    listen = _flag(services["prometheus"]["command"], "--web.listen-address")
    _, prom_port = _port(listen or ":9090", 9090)
    assert url.hostname == "prometheus" and "prometheus" in services
    assert (url.port or 80) == prom_port


def test_promtool_check_config():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    res = subprocess.run(
        [promtool, "check", "config", str(PROM)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 rule files found" in res.stdout + res.stderr


def _routes(route: dict):
    yield route
    for child in route.get("routes") or []:
        yield from _routes(child)


def test_alertmanager_config():
    amtool = shutil.which("amtool")
    if amtool is not None:
        res = subprocess.run(
            [amtool, "check-config", str(AM)], capture_output=True, text=True, timeout=30
        )
        assert res.returncode == 0, res.stdout + res.stderr
    # Structural checks (always; amtool is not installed in CI).
    cfg = yaml.safe_load(AM.read_text())
    assert set(cfg) <= {
        "global",
        "route",
        "receivers",
        "inhibit_rules",
        "templates",
        "time_intervals",
        "mute_time_intervals",
    }
    names = [r["name"] for r in cfg["receivers"]]
    assert len(names) == len(set(names)), "duplicate receiver names"
    assert "receiver" in cfg["route"], "the root route needs a receiver"
    matcher = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*\s*(=|!=|=~|!~)\s*"[^"]*"$')
    rules_text = (ROOT / "dashboards/alerts/salvage.rules.yml").read_text()
    for route in _routes(cfg["route"]):
        assert route.get("receiver", cfg["route"]["receiver"]) in names
        for m in route.get("matchers") or []:
            assert matcher.match(m), m
            label, value = re.match(r'^(\w+)\s*=\s*"([^"]*)"$', m).groups()
            assert f"{label}: {value}" in rules_text, f"no rule carries {m}"
    for rule in cfg.get("inhibit_rules") or []:
        for m in rule.get("source_matchers", []) + rule.get("target_matchers", []):
            assert matcher.match(m), m
