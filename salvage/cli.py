"""``salvage``: the command line. Every command has ``--help``."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from salvage.config import Settings

F = TypeVar("F", bound=Callable[..., object])

app = typer.Typer(
    help="Salvage: real-time return recovery on Kafka + Bytewax + River.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    """Print ``message`` on stderr as one line; the caller raises the returned exit (code 2)."""
    from rich.markup import escape

    console.print(f"[red]{escape(' '.join(message.split()))}[/red]", soft_wrap=True)
    return typer.Exit(2)


def _failure(exc: Exception) -> tuple[str, bool] | None:
    """``(one-line message, is_an_outage)`` for an expected failure (bad input, a service down or
    refusing), ``None`` for anything else (a bug: let its traceback show)."""
    import redis
    from confluent_kafka import KafkaError, KafkaException
    from grafana_client.client import GrafanaException

    from salvage.sinks.kafka import KafkaDeliveryError
    from salvage.sinks.review_queue import ReviewError

    if isinstance(exc, ReviewError):
        return str(exc), False
    if isinstance(exc, redis.RedisError):
        return f"Redis: {exc}", True
    if isinstance(exc, KafkaException):
        err = exc.args[0] if exc.args else None
        return f"Kafka: {err.str() if isinstance(err, KafkaError) else exc}", True
    if isinstance(exc, KafkaDeliveryError):
        return str(exc), True
    if isinstance(exc, GrafanaException):
        return f"Grafana: {exc}", True
    if isinstance(exc, OSError):
        if exc.strerror:
            return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror, True
        root: BaseException = exc  # an HTTP client's error: the OS error at the bottom says what
        while (below := root.__cause__ or root.__context__) is not None:
            root = below
        what = str(exc).split(" (Caused by")[0]
        strerror = getattr(root, "strerror", None)
        return f"{what}: {strerror}" if strerror else what, True
    return None


def _clear_errors(note: str = "") -> Callable[[F], F]:
    """Decorate a command: an expected failure (see :func:`_failure`) becomes a one-line message
    on stderr and exit code 2 instead of a traceback; ``note`` is added to outage messages (what
    state things are left in)."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def run(*args: object, **kwargs: object) -> object:
            try:
                return command(*args, **kwargs)
            except Exception as exc:
                failure = _failure(exc)
                if failure is None:
                    raise
                message, outage = failure
                if note and outage:
                    message = f"{message.rstrip('.')}; {note}"
                raise _fail(message) from exc

        return run  # type: ignore[return-value]

    return decorate


def _redis_args(settings: Settings) -> tuple[str, str | None]:
    """The Redis URL and password of a command that reads Redis; exit 2 on an unusable URL."""
    from salvage.sinks.redis_store import redact_url

    url = settings.redis.url
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise _fail(
            f"needs Redis: --redis-url or SALVAGE_REDIS_URL must be a redis://, rediss:// or "
            f"unix:// URL, not {redact_url(url)!r}"
        )
    return url, settings.redis.password_value()


def _settings(**overrides) -> Settings:
    """The settings, validated once at start: environment, then flags (validated like the
    environment: a flag cannot bypass a bound), then the KPI and cost settings, which would
    otherwise fail only when the flow first counts a KPI."""
    from pydantic import ValidationError

    from salvage.settings_doc import describe_error

    updates = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**updates)  # the whole tree: KPI and cost settings included
    except Exception as exc:  # pydantic ValidationError / a bad cost file: field + reason, exit 2
        from rich.markup import escape

        why = describe_error(exc) if isinstance(exc, ValidationError) else str(exc)
        console.print(f"[red]invalid SALVAGE_* setting:[/red] {escape(why)}")
        raise typer.Exit(2) from exc


def _check_policy(path: str | None) -> None:
    """Validate the policy before anything starts: a bad file stops with its field path, exit 2."""
    from salvage.policy.config import PolicyError, load_policy

    try:
        p = load_policy(path)
    except PolicyError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"policy {p.version} ({path or 'shipped default'})")


def _serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Serve Prometheus metrics on 127.0.0.1:port; a busy port is a warning, not a failure."""
    from salvage.sinks.metrics import serve

    if not port:
        return
    try:
        serve(port, host)
        console.print(f"metrics: http://{host}:{port}/metrics")
    except OSError as exc:
        console.print(f"[yellow]metrics endpoint not started on port {port}: {exc}[/yellow]")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeRemainingColumn(),
        console=console,
    )


@app.command()
@_clear_errors()
def schemas(
    out: Annotated[Path, typer.Option("--out", help="Directory for *.schema.json files")] = Path(
        "schemas"
    ),
) -> None:
    """Write a JSON Schema per input and output message type."""
    from salvage.schemas import write_schemas

    if out.exists() and not out.is_dir():
        raise _fail(f"--out {out} is a file: give a directory")
    paths = write_schemas(out)
    console.print(f"wrote {len(paths)} schemas to {out}/")


@app.command()
@_clear_errors()
def config(
    as_json: Annotated[bool, typer.Option("--json", help="Print the tree as JSON")] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the README's settings table (every variable)")
    ] = False,
) -> None:
    """Validate every SALVAGE_* setting and print the effective configuration (secrets redacted)."""
    from salvage.settings_doc import render_tree, settings_table, validate_all

    if markdown:
        print(settings_table())
        return
    tree = validate_all(_settings())
    print(json.dumps(tree, indent=2) if as_json else render_tree(tree))


@app.command()
@_clear_errors()
def generate(
    scenario: Annotated[
        str,
        typer.Option(
            help="steady-state | launch-week-backlog | silent-carrier-incident | "
            "thin-lane-incident | closed-loop"
        ),
    ] = "steady-state",
    orders: Annotated[int, typer.Option(min=1, help="Number of orders to simulate")] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes)")] = 1,
    out: Annotated[Path, typer.Option(help="Event log to write (JSONL)")] = Path("events.jsonl"),
    truth: Annotated[
        Path | None, typer.Option(help="Also write latent truth per order (JSONL)")
    ] = None,
    orders_per_day: Annotated[
        float,
        typer.Option(min=1, help="Arrival rate: the log spans orders / rate days (at least 7)"),
    ] = 2500.0,
    start: Annotated[
        str | None,
        typer.Option(
            help="First day of the log (YYYY-MM-DD, UTC; default 2026-03-02). A log that runs "
            "past today is dead-lettered from there on (SALVAGE_MAX_FUTURE_SECONDS)",
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            help="closed-loop only: the policy the world reacts to, to run the log with too "
            "(default: the experiment policy, policy/closed_loop.yaml)"
        ),
    ] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option(
            help="Repeatable: bracketing-unflagged (bracketing returns grading never flags; "
            "truth still says abuse) | realistic-text (real-style support phrasing, misspelled "
            "and mixed-intent, half labelled) | split-returns (two or more units sent back in "
            "two parcels: two returns of one order, the second still open at the first one's "
            "refund or coming after it) | goodwill (a refund or store credit naming no return "
            "for a late parcel, the order kept) | split-refunds (a return's refund paid in two "
            "parts, days apart) | foreign-currency (15% of refunds, store credits and "
            "chargebacks in GBP on EUR orders, amounts unconverted)",
        ),
    ] = None,
) -> None:
    """Simulate a brand: one interleaved event log in event-time order. ``closed-loop``: the
    customers react to the pipeline's interventions with known true effects (see README)."""
    from datetime import UTC, datetime

    from salvage.connectors.simulator import SCENARIOS, VARIANTS, write_log

    unknown = sorted(set(variant or ()) - set(VARIANTS))
    if unknown:
        raise _fail(f"--variant: unknown {unknown}; choose from {', '.join(VARIANTS)}")

    first: datetime | None = None
    if start is not None:
        try:
            first = datetime.strptime(start, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise _fail(f"--start: {start!r} is not a date (YYYY-MM-DD)") from None

    if scenario == "closed-loop":
        _generate_closed_loop(orders, seed, out, truth, first, orders_per_day, policy)
        return
    if scenario not in SCENARIOS:
        console.print(
            f"[red]unknown scenario {scenario!r}[/red]; choose from {', '.join(SCENARIOS)}"
        )
        raise typer.Exit(2)
    with _progress() as bar:
        task = bar.add_task(f"generating {scenario}", total=orders)
        counts = write_log(
            scenario,
            orders,
            seed,
            out,
            truth,
            start=first,
            progress=lambda n: bar.update(task, completed=n),
            orders_per_day=orders_per_day,
            variants=variant or (),
        )
        bar.update(task, completed=orders)
    console.print(f"wrote {counts.get('events', sum(counts.values())):,} events to {out}")


@app.command()
def run(
    input: Annotated[
        list[Path] | None,
        typer.Option("--input", "-i", help="Event log(s): file mode. Omit for Kafka mode."),
    ] = None,
    out_dir: Annotated[
        Path,
        typer.Option(
            envvar="SALVAGE_OUT_DIR",
            help="Where outputs go (Kafka mode: the uplift inputs and metrics snapshot)",
        ),
    ] = Path("out"),
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "-w",
            min=1,
            envvar="BYTEWAX_WORKERS_PER_PROCESS",
            help="Bytewax worker threads per process (default 1)",
        ),
    ] = None,
    addresses: Annotated[
        str | None,
        typer.Option(
            "--addresses",
            "-a",
            envvar="BYTEWAX_ADDRESSES",
            help="Cluster: host:port of every process, same order everywhere, this one included "
            "(',' or ';' separated); also BYTEWAX_HOSTFILE_PATH",
        ),
    ] = None,
    process_id: Annotated[
        int | None,
        typer.Option(
            "--process-id",
            "-p",
            min=0,
            envvar="BYTEWAX_PROCESS_ID",
            help="Cluster: this process's index in --addresses (else the StatefulSet ordinal of "
            "BYTEWAX_POD_NAME in BYTEWAX_STATEFULSET_NAME)",
        ),
    ] = None,
    to_end: Annotated[
        bool, typer.Option("--to-end/--follow", help="Kafka mode: stop at the end of the topics")
    ] = False,
    from_beginning: Annotated[
        bool,
        typer.Option(
            "--from-beginning",
            help="Kafka mode, no recovery snapshot: read the topics from the start instead of "
            "from the consumer group's offsets (SALVAGE_KAFKA_GROUP_ID, committed at each clean "
            "stop)",
        ),
    ] = False,
    shards: Annotated[
        int | None, typer.Option(help="Logical shards per stage (>= workers)")
    ] = None,
    kafka_bootstrap: Annotated[
        str | None,
        typer.Option(help="Kafka bootstrap; default SALVAGE_KAFKA_BOOTSTRAP or embedded"),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(help="Redis case store URL ('' disables); default SALVAGE_REDIS_URL"),
    ] = None,
    no_case_store: Annotated[
        bool,
        typer.Option(
            "--no-case-store",
            help="Run without the Redis case store and review queue (else a configured Redis "
            "that is down or refuses the password stops the run, exit 2)",
        ),
    ] = False,
    summary: Annotated[bool, typer.Option(help="Print a summary at the end")] = True,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus /metrics here (0: off; SALVAGE_METRICS_PORT)"),
    ] = None,
    recovery_dir: Annotated[
        Path | None,
        typer.Option(
            help="Bytewax recovery directory: created and initialised when empty, resumed from "
            "its last snapshot otherwise (restart with the same arguments)"
        ),
    ] = None,
    snapshot_interval: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds between recovery snapshots (the Bytewax epoch)"),
    ] = 5.0,
    backup_interval: Annotated[
        float,
        typer.Option(min=0, help="Seconds superseded snapshots are kept (your backup interval)"),
    ] = 0.0,
    recovery_partitions: Annotated[
        int | None,
        typer.Option(min=1, help="Partitions created in a new recovery dir (default: shards)"),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            help="Intervention policy YAML (default SALVAGE_POLICY, else the shipped one)"
        ),
    ] = None,
) -> None:
    """Run the recovery dataflow (file mode with --input, else Kafka mode).

    SIGTERM or Ctrl-C drains: sources stop at the next batch, everything in flight is written,
    the final snapshot is taken and the command exits 0; with --recovery-dir a restart with the
    same arguments continues where it stopped. A second signal exits at once (code 143).

    Cluster: start the same command once per process with the same --addresses and its own
    --process-id (the BYTEWAX_* variables of `python -m bytewax.run` work too). Each input file or
    Kafka partition is read by exactly one worker of the cluster; file-mode outputs are written by
    process 0 (its --out-dir); Kafka mode needs a real bootstrap (no embedded broker per process).
    """
    from salvage.flows.recovery import FlowSpec
    from salvage.flows.sources import check_event_log, clear_stop, stop_requested
    from salvage.runner import (
        ClusterError,
        Recovery,
        RecoveryMismatch,
        kafka_available,
        prepare_recovery,
        render_summary,
        resolve_cluster,
        run_flow,
        summarise,
    )

    try:
        cluster = resolve_cluster(addresses, process_id, workers)
    except (ClusterError, OSError) as exc:
        console.print(f"[red]cluster: {exc}[/red]")
        raise typer.Exit(2) from exc
    workers = cluster.workers_per_process

    settings = _settings(
        shards=shards,
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        metrics_port=metrics_port,
        policy=str(policy) if policy else None,
    )
    for path in input or ():
        try:
            check_event_log(Path(path))
        except (OSError, ValueError) as exc:
            raise _fail(str(exc)) from exc
    _check_policy(settings.dataflow.policy)
    _serve_metrics(settings.metrics.port, settings.metrics.host)
    if settings.dataflow.shards < cluster.total_workers:
        settings = settings.updated(shards=cluster.total_workers)
    if cluster.multi_process:
        if not input and not settings.kafka.bootstrap:
            console.print(
                "[red]cluster: Kafka mode on several processes needs --kafka-bootstrap (or "
                "SALVAGE_KAFKA_BOOTSTRAP): an embedded broker would be private to one process[/red]"
            )
            raise typer.Exit(2)
        console.print(
            f"cluster: process {cluster.process_id} of {cluster.processes} "
            f"({', '.join(cluster.addresses)}), {workers} worker(s) each, "
            f"{settings.dataflow.shards} shards"
        )
    use_store = _case_store_at_start(settings, redis_url, no_case_store)
    clear_stop()
    _install_drain_handlers()
    recovery = None
    if recovery_dir is not None:
        recovery = Recovery(
            recovery_dir,
            snapshot_seconds=snapshot_interval,
            backup_seconds=backup_interval,
            partitions=recovery_partitions or max(settings.dataflow.shards, cluster.total_workers),
        )

    def start(spec: FlowSpec) -> float:
        if recovery is not None:
            try:
                resumed = prepare_recovery(recovery, spec, cluster)
            except RecoveryMismatch as exc:
                console.print(f"[red]{exc}[/red]")
                raise typer.Exit(2) from exc
            console.print(
                f"recovery: {'resuming from' if resumed else 'initialised'} {recovery_dir} "
                f"(snapshot every {snapshot_interval:g}s, backup interval {backup_interval:g}s)"
            )
        return run_flow(spec, recovery, cluster)

    if input:
        if cluster.process_id == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
        spec = FlowSpec(
            settings,
            inputs=list(input),
            out_dir=out_dir,
            case_store=use_store,
            process_id=cluster.process_id,
            processes=cluster.processes,
        )
        secs = start(spec)
        if stop_requested():
            console.print(f"file mode: drained on signal after {secs:.1f}s -> {out_dir}/")
            if recovery is None:
                console.print("[yellow]no --recovery-dir: the outputs are partial[/yellow]")
            return
        if cluster.process_id != 0:
            console.print(f"file mode: done in {secs:.1f}s (outputs: process 0's {out_dir}/)")
            return
        console.print(f"file mode: done in {secs:.1f}s -> {out_dir}/")
        from salvage.report import write_metrics_snapshot

        write_metrics_snapshot(out_dir)  # `salvage report` reads it later (KPIs, holdouts)
        if summary:
            if cluster.multi_process:
                console.print("(metrics below are this process's share of the cluster)")
            render_summary(summarise(out_dir), out_dir, console)
        return
    with kafka_available(settings, console.print) as live:
        spec = FlowSpec(
            live,
            to_end=to_end,
            case_store=use_store,
            process_id=cluster.process_id,
            processes=cluster.processes,
            out_dir=out_dir,  # the uplift's inputs (assignments, outcomes) land there
            from_beginning=from_beginning,
        )
        secs = start(spec)
        how = "drained on signal" if stop_requested() else "done"
        console.print(f"kafka mode: {how} in {secs:.1f}s")
        if cluster.process_id == 0:
            from salvage.report import write_metrics_snapshot

            write_metrics_snapshot(out_dir)  # this process's metrics, for `salvage report`
        if summary:
            from salvage.runner import summarise_metrics

            if cluster.multi_process:
                console.print("(metrics below are this process's share of the cluster)")
            # the uplift table reads the run's out dir (process 0 writes its inputs there)
            here = out_dir if cluster.process_id == 0 else None
            render_summary(summarise_metrics(), here, console)
            console.print(
                f"Outputs: topics {live.topics.interventions}, {live.topics.lane_alerts}, "
                f"{live.topics.dead_letters} on {live.kafka.bootstrap}"
            )


def _case_store_at_start(settings: Settings, flag_url: str | None, no_case_store: bool) -> bool:
    """Whether ``run`` uses the Redis case store and review queue; strict when Redis was
    configured explicitly (``--redis-url``, ``SALVAGE_REDIS_URL`` or ``SALVAGE_REDIS__URL`` in any
    case, or ``SALVAGE_REDIS_PASSWORD``):
    down or refusing the password is exit 2 with the reason. Only the built-in default URL
    falls back to running without, and says so."""
    from salvage.config import env_values
    from salvage.sinks.redis_store import redact_url, redis_problem

    if no_case_store or not settings.redis.url:
        console.print("case store: off (--no-case-store or an empty Redis URL)")
        return False
    redis_env = env_values().get("redis")  # flat or nested, any case: as Settings reads it
    explicit = (
        flag_url is not None
        or (isinstance(redis_env, dict) and "url" in redis_env)
        or settings.redis.password is not None
    )
    password = settings.redis.password_value()
    problem = redis_problem(settings.redis.url, password)
    if problem is None:
        console.print(f"case store: Redis {redact_url(settings.redis.url)}")
        return True
    if explicit:
        raise _fail(f"case store: {problem}; fix it, or run with --no-case-store")
    console.print(
        f"[yellow]case store: off ({problem}; no Redis configured, so the default was tried; "
        f"set SALVAGE_REDIS_URL to require it, or pass --no-case-store)[/yellow]"
    )
    return False


def _install_drain_handlers() -> None:
    """SIGTERM / SIGINT: first one drains (see ``salvage.flows.sources.request_stop``), second one
    exits.

    Bytewax runs the dataflow in Rust and calls back into Python's signal machinery between
    activations, so the handler runs promptly on the main thread; it only sets a flag."""
    from salvage.flows.sources import request_stop, stop_requested

    def handler(signum: int, _frame: object) -> None:
        if stop_requested():
            os._exit(128 + signum)
        console.print(f"{signal.Signals(signum).name}: draining (send again to exit at once)")
        request_stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _generate_closed_loop(
    orders: int,
    seed: int,
    out: Path,
    truth: Path | None,
    first,
    orders_per_day: float,
    policy: Path | None = None,
) -> None:
    """``generate --scenario closed-loop``: customers react to the pipeline's interventions."""
    from salvage.connectors.closed_loop import EXPERIMENT_POLICY
    from salvage.connectors.closed_loop import write_log as write_closed_loop

    record = write_closed_loop(
        orders,
        seed,
        out,
        truth,
        start=first,
        orders_per_day=orders_per_day,
        settings=_settings(policy=str(policy or EXPERIMENT_POLICY)),
        progress=lambda m: console.print(f"closed loop: {m}"),
    )
    effects = ", ".join(f"{a} {d:+.3f}" for a, d in record["true_effects"].items())
    state = "converged" if record["converged"] else "NOT converged"
    console.print(f"wrote {out} ({state} after {record['iterations']} pipeline run(s))")
    console.print(f"true effects (retention diff on assigned orders): {effects}")
    repeat = ", ".join(f"{a} {d:+.3f}" for a, d in record["repeat"]["true_effects"].items())
    console.print(f"true effects (repeat-rate diff on assigned customers): {repeat}")
    console.print(
        f"run it with the same policy: salvage run --input {out} --out-dir OUT "
        f"--policy {record['policy']}"
    )


@app.command()
def uplift(
    out_dir: Annotated[
        Path, typer.Option(envvar="SALVAGE_OUT_DIR", help="A finished run's output directory")
    ] = Path("out"),
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """Intention-to-treat uplift of a finished run: treated - holdout, 95% intervals."""
    import json

    from salvage import uplift as itt

    if not itt.has_inputs(out_dir):
        raise _fail(
            f"{out_dir}: no {itt.ASSIGNMENTS} (not the out dir of a finished `salvage run`?)"
        )
    result = itt.uplift(out_dir)
    if json_out:
        print(json.dumps(result, indent=1, sort_keys=True))
        return
    if not result["actions"]:
        console.print("no order reached a randomised decision: nothing to measure")
        return
    itt.render(Console(), result)


@app.command()
def broker(
    port: Annotated[int | None, typer.Option(help="Loopback port (default: a free one)")] = None,
    partitions: Annotated[int | None, typer.Option(help="Partitions per topic")] = None,
) -> None:
    """Run the embedded Kafka-compatible broker in the foreground, with Salvage's topics.

    SIGTERM or Ctrl-C stops the broker (the Tansu process) and exits 0."""
    import threading

    from salvage.connectors.broker import EmbeddedBroker, ensure_topics

    settings = _settings(topic_partitions=partitions)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()  # the loop below leaves the `with`, which stops Tansu

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with EmbeddedBroker(port=port, silent=True) as b:
        ensure_topics(
            settings.updated(kafka_bootstrap=b.bootstrap).kafka.as_librdkafka_dict(),
            list(settings.topics.inputs().values()) + settings.topics.outputs(),
            settings.topics.partitions,
        )
        print(b.bootstrap, flush=True)
        console.print(f"broker up: export SALVAGE_KAFKA_BOOTSTRAP={b.bootstrap}  (Ctrl-C stops it)")
        while b.running and not stop.wait(0.5):
            pass
    console.print("broker stopped")


@app.command()
@_clear_errors()
def replay(
    log: Annotated[Path, typer.Argument(help="Event log: JSONL, gzip'd JSONL or Parquet")],
    speed: Annotated[
        float | None,
        typer.Option(min=0.000001, help="Pace by event time, N times faster than real time"),
    ] = None,
    max_speed: Annotated[
        bool, typer.Option("--max", help="As fast as possible (the default)")
    ] = False,
    from_: Annotated[
        str | None,
        typer.Option("--from", help="Only events with occurred_at >= this (ISO 8601 with zone)"),
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="Only events with occurred_at < this")
    ] = None,
    rate: Annotated[
        float | None, typer.Option(min=0.000001, help="At most N messages per second")
    ] = None,
    kafka_bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers")] = None,
) -> None:
    """Publish an event log to the input topics, keyed by order id, with a progress bar.

    Records go out in the log's own (arrival) order; --speed paces them by occurred_at and
    --rate caps messages per second. Re-publishing a log is harmless: the pipeline drops repeated
    event ids, and the same key always lands on the same partition.
    """
    from salvage.connectors.replay import parse_time
    from salvage.runner import replay_log

    if max_speed and speed is not None:
        console.print("[red]--max and --speed exclude each other[/red]")
        raise typer.Exit(2)
    try:
        t_from = parse_time(from_) if from_ else None
        t_to = parse_time(to) if to else None
    except ValueError as exc:
        console.print(f"[red]bad --from/--to: {exc}[/red]")
        raise typer.Exit(2) from exc
    settings = _settings(kafka_bootstrap=kafka_bootstrap)
    if not settings.kafka.bootstrap:
        console.print(
            "[red]replay needs a broker: set SALVAGE_KAFKA_BOOTSTRAP or --kafka-bootstrap[/red]"
        )
        raise typer.Exit(2)
    if not log.is_file():
        console.print(f"[red]no such event log: {log}[/red]")
        raise typer.Exit(2)
    with _progress() as bar:
        task = bar.add_task(f"publishing {log.name}", total=None)
        stats = replay_log(
            settings,
            log,
            lambda done, total: bar.update(task, completed=done, total=total),
            speed=speed,
            rate=rate,
            t_from=t_from,
            t_to=t_to,
        )
    for topic, n in sorted(stats.counts.items()):
        console.print(f"  {topic}: {n:,} messages")
    rate_s = stats.published / stats.seconds if stats.seconds > 0 else 0.0
    console.print(
        f"published {stats.published:,} messages in {stats.seconds:.1f}s ({rate_s:,.0f}/s); "
        f"{stats.skipped:,} outside the time window, {stats.untimed:,} without an event time"
    )


@app.command()
@_clear_errors()
def record(
    out: Annotated[Path, typer.Option("--out", help="Event log to write (JSONL)")] = Path(
        "events.jsonl"
    ),
    follow: Annotated[
        float | None,
        typer.Option(help="Keep reading until no message arrived for this many seconds"),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds")] = 600.0,
    kafka_bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers")] = None,
) -> None:
    """Capture the live input topics into an event log (event-time order), for replay or run."""
    from salvage.runner import record_topics

    settings = _settings(kafka_bootstrap=kafka_bootstrap)
    if not settings.kafka.bootstrap:
        console.print(
            "[red]record needs a broker: set SALVAGE_KAFKA_BOOTSTRAP or --kafka-bootstrap[/red]"
        )
        raise typer.Exit(2)
    written, skipped = record_topics(settings, out, follow_seconds=follow, timeout_s=timeout)
    console.print(
        f"recorded {written:,} messages to {out}"
        + (f" ({skipped} skipped: empty or containing a newline)" if skipped else "")
    )


@app.command()
def demo(
    orders: Annotated[int, typer.Option(min=100, help="Orders to simulate")] = 5000,
    scenario: Annotated[str, typer.Option(help="Simulator scenario")] = "launch-week-backlog",
    out_dir: Annotated[Path, typer.Option(help="Where the demo writes its files")] = Path(
        "demo-out"
    ),
    seed: Annotated[int, typer.Option(help="Simulator seed")] = 7,
) -> None:
    """Simulate a brand, publish it to Kafka, run the pipeline, and show what happened.

    While the dataflow runs, a live view shows the headline numbers (events, event time, open
    cases, triggers and holdouts, value of orders kept, refund leakage, open lane alerts, dead
    letters, consumer lag); plain lines every 5 s when the output is not a terminal. The outputs,
    a metrics snapshot and an HTML report land in OUT_DIR."""
    from salvage.connectors.outputs import OUTPUTS
    from salvage.connectors.simulator import write_log
    from salvage.flows.recovery import FlowSpec
    from salvage.live import LiveView
    from salvage.report import write_metrics_snapshot
    from salvage.runner import (
        consume_topic,
        kafka_available,
        publish_log,
        render_summary,
        run_flow,
        summarise,
    )
    from salvage.sinks.redis_store import redis_available

    started = time.perf_counter()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    settings = _settings()
    _serve_metrics(settings.metrics.port, settings.metrics.host)
    log = out_dir / "events.jsonl"
    with _progress() as bar:
        task = bar.add_task(f"simulating {scenario}", total=orders)
        write_log(
            scenario,
            orders,
            seed,
            log,
            out_dir / "truth.jsonl",
            progress=lambda n: bar.update(task, completed=n),
        )
        bar.update(task, completed=orders)
    salted = _salt(log)
    console.print(f"salted the log with {salted} malformed records (they must become dead letters)")
    use_store = bool(settings.redis.url) and redis_available(
        settings.redis.url,
        settings.redis.password_value(),
    )
    if not use_store:
        console.print(
            "[yellow]no Redis answers: the demo runs without the case store and review queue "
            "(as `run --no-case-store` would)[/yellow]"
        )
    with kafka_available(settings, console.print) as live:
        with _progress() as bar:
            task = bar.add_task("publishing to Kafka", total=log.stat().st_size)
            counts = publish_log(live, log, lambda done, _t: bar.update(task, completed=done))
        console.print("published " + ", ".join(f"{t}={n:,}" for t, n in sorted(counts.items())))
        console.print("running the recovery dataflow (Kafka mode, to the end of the topics)...")
        with LiveView(console, title="Salvage · live (demo)"):
            # the whole log it just published, whatever a previous demo on this broker committed
            spec = FlowSpec(
                live, to_end=True, case_store=use_store, out_dir=out_dir, from_beginning=True
            )
            secs = run_flow(spec)
        console.print(f"dataflow finished in {secs:.1f}s; reading the output topics...")
        for stream in OUTPUTS:
            topic = live.topics.output(stream)
            consume_topic(live, topic, out_dir / stream.file_name, group="salvage-demo")
    write_metrics_snapshot(out_dir)  # `salvage report` reads it later (holdouts, uplift)
    render_summary(summarise(out_dir), out_dir, console)
    if use_store:
        from salvage.sinks.redis_store import redact_url

        console.print(
            f"Case store: Redis {redact_url(settings.redis.url)} (keys salvage:case:<order_id>)"
        )
    from salvage.report import write_report

    report_path = write_report(out_dir, out_dir / "report.html")
    console.print(f"HTML report: {report_path.resolve()}")
    console.print(f"demo finished in {time.perf_counter() - started:.0f}s")


_MALFORMED = [
    b"this line is not JSON",
    b'{"event_type": "carrier_scan", "order_id": "O00000001", "schema_version": 1}',
    b'{"event_id": "bad-ts", "event_type": "support_contact", "order_id": "O00000002", '
    b'"schema_version": 1, "occurred_at": "last tuesday", "channel": "chat"}',
    b'{"event_id": "x1", "event_type": "teleported", "order_id": "O00000003", '
    b'"schema_version": 1, "occurred_at": "2026-03-02T10:00:00Z"}',
    b'{"event_id": 7, "event_type": "support_contact", "order_id": "O00000004", '
    b'"schema_version": 1, "occurred_at": "2026-03-02T10:00:00Z", "channel": "chat"}',
    b'{"event_id": "\xff\xfe", "event_type": "support_contact"}',
]


def _salt(log: Path) -> int:
    """Spread a few malformed records through a log (deterministically)."""
    lines = log.read_bytes().splitlines(keepends=True)
    step = max(1, len(lines) // (len(_MALFORMED) + 1))
    for i, bad in enumerate(_MALFORMED, start=1):
        lines.insert(i * step + i - 1, bad + b"\n")
    log.write_bytes(b"".join(lines))
    return len(_MALFORMED)


@app.command()
def compare(
    policy: Annotated[
        list[Path], typer.Option("--policy", help="Two policy files: A then B (give it twice)")
    ],
    input: Annotated[Path, typer.Option("--input", "-i", help="Event log to replay")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """What-if: run two policies over the same log; compare triggers, cost, retained revenue."""
    import json

    from rich.table import Table

    from salvage.compare import compare as compare_runs
    from salvage.compare import run_policy
    from salvage.policy.config import PolicyError

    if len(policy) != 2:
        console.print("[red]give exactly two policies: --policy A.yaml --policy B.yaml[/red]")
        raise typer.Exit(2)
    if not input.is_file():
        console.print(f"[red]no such event log: {input}[/red]")
        raise typer.Exit(2)
    settings = _settings()
    try:
        a, b = (run_policy(settings, input, str(p)) for p in policy)
    except PolicyError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    result = compare_runs(a, b)
    if json_out:
        print(json.dumps(result, indent=1))
        return
    t = Table(
        title=f"A = {result['a']['policy']} ({policy[0]}), B = {result['b']['policy']} "
        f"({policy[1]})"
    )
    for col in (
        "action",
        "triggers A",
        "triggers B",
        "cost A",
        "cost B",
        "exp. retained A",
        "exp. retained B",
        "est. margin A [95% CI]",
        "est. margin B [95% CI]",
    ):
        t.add_column(col, justify="left" if col == "action" else "right")

    def est(m: dict | None) -> str:
        return "-" if m is None else f"{m['estimate']:,.0f} [{m['ci'][0]:,.0f}, {m['ci'][1]:,.0f}]"

    for r in [*result["rows"], {"action": "total", **result["total"]}]:
        t.add_row(
            r["action"],
            str(r["a"]),
            str(r["b"]),
            f"{r['cost_a']:,.2f}",
            f"{r['cost_b']:,.2f}",
            f"{r['retained_a']:,.2f}",
            f"{r['retained_b']:,.2f}",
            est(r["margin_a"]),
            est(r["margin_b"]),
        )
    Console().print(t)
    Console().print(
        f"(order, action) pairs: {result['both']} in both, {result['only_a']} only in A, "
        f"{result['only_b']} only in B. Expected retained revenue = lift x P(lost) x value at "
        "risk, before holdout (the policy's own claim). Est. margin = what the log shows it "
        "earned: assigned orders x ITT retained-margin difference treated - holdout, 95% "
        "interval (see `salvage uplift`)."
    )


@app.command()
def report(
    out_dir: Annotated[Path, typer.Option(help="A finished run's output directory")] = Path(
        "demo-out"
    ),
    html: Annotated[Path, typer.Option(help="HTML report to write")] = Path("report.html"),
    events: Annotated[
        Path | None, typer.Option(help="Event log (default OUT_DIR/events.jsonl)")
    ] = None,
) -> None:
    """Write a self-contained HTML report (charts, lane heatmap, uplift) of a finished run."""
    from salvage.report import write_report

    if not out_dir.is_dir():
        console.print(f"[red]no such output directory: {out_dir}[/red]")
        raise typer.Exit(2)
    console.print(f"report: {write_report(out_dir, html, events=events).resolve()}")


dashboards_app = typer.Typer(help="Grafana dashboards (generated from dashboards/).")
app.add_typer(dashboards_app, name="dashboards")


@dashboards_app.command("push")
@_clear_errors()
def dashboards_push(
    url: Annotated[str, typer.Option(envvar="GRAFANA_URL", help="Grafana base URL")] = (
        "http://localhost:3000"
    ),
    folder: Annotated[str, typer.Option(help="Grafana folder")] = "Salvage",
) -> None:
    """Push the committed dashboards to Grafana (token from GRAFANA_TOKEN, never a flag)."""
    from salvage.dashboards.push import push_dashboards

    for u in push_dashboards(url, os.environ.get("GRAFANA_TOKEN"), folder=folder):
        console.print(f"pushed {u}")


@app.command()
@_clear_errors()
def explain(
    order_id: Annotated[str, typer.Argument(help="The order to explain")],
    redis_url: Annotated[str | None, typer.Option(help="Case store URL")] = None,
) -> None:
    """Print a case's features, scores, candidate actions, guardrails and decision."""
    from rich.table import Table

    from salvage.sinks.redis_store import CaseStore

    rec = CaseStore(*_redis_args(_settings(redis_url=redis_url))).get(order_id)
    if rec is None:
        console.print(f"[red]no case {order_id!r} in the case store[/red]")
        raise typer.Exit(1)
    doc = rec["doc"]
    out = Console()
    out.print(
        f"[bold]{doc['order_id']}[/bold]  customer {doc['customer_id']}  status {doc['status']}"
        f"  outcome {doc['outcome']}  updated {doc['updated_at']}  lane {doc['lane']}"
    )
    sc = doc["scores"]
    line = (
        f"scores (driving: {sc['model_version']}): recoverability {sc['recoverability']:.3f}, "
        f"abuse {sc['abuse']:.3f}"
    )
    if "rules" in sc:
        line += f"; rules {sc['rules']['recoverability']:.3f} / {sc['rules']['abuse']:.3f}"
    if sc.get("models"):
        line += "; models (shadow or active) " + " / ".join(
            f"{v:.3f}" for v in sc["models"].values()
        )
    out.print(line)
    t = Table(title="Features at the last update")
    t.add_column("feature")
    t.add_column("value", justify="right")
    for k, v in sorted(doc["features"].items()):
        if v:
            t.add_row(k, f"{v:.4g}")
    out.print(t)
    d = doc.get("decision")
    if not d and doc.get("last_decision"):
        out.print("this update decided nothing; the latest decision on the case was:")
        d = doc["last_decision"]
    if not d:
        out.print("decision: no eligible action with a positive expected value")
    else:
        t = Table(title="Candidate actions (expected value = lift x P(lost) x value - cost)")
        for col in ("action", "EV", "note"):
            t.add_column(col)
        for action, ev, *note in d["candidates"]:
            t.add_row(action, f"{ev:.2f}", note[0] if note else "")
        out.print(t)
        out.print(
            f"decision: [bold]{d['action']}[/bold] EV {d['expected_value']:.2f} cost "
            f"{d.get('cost', 0.0):.2f}; reasons {', '.join(d['reason_codes']) or '-'}; "
            f"stateless guardrails {', '.join(d.get('guardrails', [])) or '-'}; "
            f"suppressed by {d['suppressed_by'] or '-'}; holdout {d.get('holdout', False)}; "
            f"trigger {d.get('trigger_id', '-')}"
        )
    out.print(f"actions triggered on this order: {', '.join(doc['triggered']) or 'none'}")


models_app = typer.Typer(help="The online models a run has learned (from its recovery state).")
app.add_typer(models_app, name="models")


@models_app.command("export")
def models_export(
    out: Annotated[Path, typer.Option(help="Folder to write the export to")] = Path(
        "models-export"
    ),
    recovery_dir: Annotated[
        list[Path],
        typer.Option(
            envvar="SALVAGE_RECOVERY_DIR",
            help="The run's --recovery-dir (model checkpoints live in DIR/models); a cluster: "
            "repeat it for every process's directory",
        ),
    ] = [Path("recovery")],  # noqa: B006 - typer reads the default, never mutates it
) -> None:
    """Write the current models (weights, scaler, shadow/active, rolling AUC / log loss / Brier
    beside the rule baseline's) per model shard, from its newest checkpoint."""
    from rich.table import Table

    from salvage.models_export import ExportError, export_models

    try:
        summary = export_models(recovery_dir, out)
    except ExportError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    table = Table("shard", "model", "driving", "labels", "AUC model", "AUC rules", "Brier model")
    for key, shard in summary["shards"].items():
        for name, m in shard["models"].items():
            table.add_row(
                key,
                name,
                m["driving"],
                f"{m['labels']:,}",
                "no value" if m["model"]["auc"] is None else f"{m['model']['auc']:.3f}",
                "no value" if m["rules"]["auc"] is None else f"{m['rules']['auc']:.3f}",
                f"{m['model']['brier']:.3f}",
            )
    console.print(table)
    console.print(
        f"wrote {out}/summary.json and model-NNNN/{{recoverability,abuse}}.json, models.pkl"
    )


review_app = typer.Typer(help="The human review queue (Redis Stream, consumer group).")
app.add_typer(review_app, name="review")


def _queue(settings: Settings):
    from salvage.sinks.review_queue import ReviewQueue

    return ReviewQueue(*_redis_args(settings))


@review_app.command("list")
@_clear_errors()
def review_list(
    deadline_hours: Annotated[float, typer.Option(help="Unclaimed longer than this: overdue")] = 4,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL")] = None,
) -> None:
    """Open reviews, oldest first, with the queue's depth and overdue count."""
    queue = _queue(_settings(redis_url=redis_url))
    out = Console()
    for r in queue.list():
        doc = r.doc
        out.print(
            f"{r.entry_id}  {r.age_seconds() / 3600:6.1f} h  order {r.order_id}  "
            f"EV {doc.get('expected_value', 0):.2f}  {', '.join(doc.get('reason_codes', []))}"
        )
    stats = queue.stats(deadline_hours * 3600)
    out.print(
        f"depth {stats['depth']:.0f}, unclaimed {stats['unclaimed']:.0f}, "
        f"claimed {stats['claimed']:.0f}, "
        f"overdue {stats['overdue']:.0f} (> {deadline_hours:g} h unclaimed), "
        f"oldest {stats['oldest_age_seconds'] / 3600:.1f} h"
    )


@review_app.command("claim")
@_clear_errors()
def review_claim(
    reviewer: Annotated[str, typer.Option(help="Your reviewer id (not a name)")],
    count: Annotated[int, typer.Option(min=1, help="How many to claim")] = 1,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL")] = None,
) -> None:
    """Claim the oldest unclaimed (or abandoned) reviews."""
    got = _queue(_settings(redis_url=redis_url)).claim(reviewer, count)
    for r in got:
        Console().print(f"{r.entry_id}  order {r.order_id}  trigger {r.trigger_id}")
    if not got:
        console.print("nothing to claim")


@review_app.command("resolve")
@_clear_errors(note="the review stays claimed: run the same command again")
def review_resolve(
    entry_id: Annotated[str, typer.Argument(help="The review's entry id (from claim)")],
    verdict: Annotated[str, typer.Option(help="approve | deny | abuse_confirmed")],
    reviewer: Annotated[str, typer.Option(help="Your reviewer id (not a name)")],
    redis_url: Annotated[str | None, typer.Option(help="Redis URL")] = None,
    kafka_bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers (SALVAGE_KAFKA_BOOTSTRAP)")
    ] = None,
    print_only: Annotated[
        bool,
        typer.Option(
            "--print-only",
            help="Do not publish: print the event on stdout and resolve the review (delivering "
            "the event is then up to you, e.g. append it to a log for `salvage replay`)",
        ),
    ] = False,
    publish_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for Kafka to acknowledge the event")
    ] = 30.0,
    force: Annotated[
        bool,
        typer.Option("--force", help="Resolve a review another reviewer claimed"),
    ] = False,
) -> None:
    """Resolve a claimed review: publish its verdict as a review_resolved event to the returns
    topic, then mark the review done.

    Only the reviewer who claimed it resolves it (--force overrides); the reviewer is an id
    (letters, digits, . _ -), not a name. The event is checked against the input contract
    before anything is published: one the pipeline would reject stops here with exit 2.

    Needs a broker (--kafka-bootstrap or SALVAGE_KAFKA_BOOTSTRAP) unless --print-only. The review
    is marked done only once Kafka acknowledged the event: if publishing fails the command exits
    2 and the review stays claimed, so running it again is safe (same event id)."""
    import json

    settings = _settings(redis_url=redis_url, kafka_bootstrap=kafka_bootstrap)
    if not print_only and not settings.kafka.bootstrap:
        raise _fail(
            "resolve publishes the verdict to Kafka: set --kafka-bootstrap or "
            "SALVAGE_KAFKA_BOOTSTRAP, or pass --print-only to print the event instead"
        )
    queue = _queue(settings)

    def publish(event: dict) -> None:
        from salvage.sinks.kafka import TopicProducer

        conf = settings.kafka.as_librdkafka_dict()
        with TopicProducer(conf, message_timeout_ms=int(publish_timeout * 1000)) as producer:
            producer.produce(
                settings.topics.returns, event["order_id"].encode(), json.dumps(event).encode()
            )  # the producer's exit flushes: it returns once Kafka acknowledged, else raises

    def show(event: dict) -> None:
        print(json.dumps(event), flush=True)

    event = queue.resolve(
        entry_id, verdict, reviewer, publish=show if print_only else publish, force=force
    )
    if print_only:
        console.print(f"resolved {entry_id}; the event above was not published (--print-only)")
    else:
        console.print(
            f"resolved {entry_id}: published review_resolved for {event['order_id']} to "
            f"{settings.topics.returns}"
        )


def main() -> None:  # pragma: no cover
    app()
