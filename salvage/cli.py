"""``salvage``: the command line. Every command has ``--help``."""

from __future__ import annotations

import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from salvage.config import Settings

app = typer.Typer(
    help="Salvage: real-time return recovery on Kafka + Bytewax + River.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def _settings(**overrides) -> Settings:
    try:
        base = Settings()
    except Exception as exc:  # pydantic ValidationError: show the field and reason, exit 2
        console.print(f"[red]invalid SALVAGE_* setting:[/red] {exc}")
        raise typer.Exit(2) from exc
    updates = {k: v for k, v in overrides.items() if v is not None}
    return base.model_copy(update=updates) if updates else base


def _serve_metrics(port: int) -> None:
    """Serve Prometheus metrics on 127.0.0.1:port; a busy port is a warning, not a failure."""
    from sinks.metrics import serve

    if not port:
        return
    try:
        serve(port)
        console.print(f"metrics: http://127.0.0.1:{port}/metrics")
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
def schemas(
    out: Annotated[Path, typer.Option("--out", help="Directory for *.schema.json files")] = Path(
        "schemas"
    ),
) -> None:
    """Write a JSON Schema per input and output message type."""
    from salvage.schemas import write_schemas

    paths = write_schemas(out)
    console.print(f"wrote {len(paths)} schemas to {out}/")


@app.command()
def generate(
    scenario: Annotated[str, typer.Option(help="steady-state | launch-week-backlog")] = (
        "steady-state"
    ),
    orders: Annotated[int, typer.Option(min=1, help="Number of orders to simulate")] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes)")] = 1,
    out: Annotated[Path, typer.Option(help="Event log to write (JSONL)")] = Path("events.jsonl"),
    truth: Annotated[
        Path | None, typer.Option(help="Also write latent truth per order (JSONL)")
    ] = None,
) -> None:
    """Simulate a brand: one interleaved event log in event-time order."""
    from connectors.simulator import SCENARIOS, write_log

    if scenario not in SCENARIOS:
        console.print(
            f"[red]unknown scenario {scenario!r}[/red]; choose from {', '.join(SCENARIOS)}"
        )
        raise typer.Exit(2)
    with _progress() as bar:
        task = bar.add_task(f"generating {scenario}", total=orders)
        counts = write_log(
            scenario, orders, seed, out, truth, progress=lambda n: bar.update(task, completed=n)
        )
        bar.update(task, completed=orders)
    console.print(f"wrote {counts.get('events', sum(counts.values())):,} events to {out}")


@app.command()
def run(
    input: Annotated[
        list[Path] | None,
        typer.Option("--input", "-i", help="Event log(s): file mode. Omit for Kafka mode."),
    ] = None,
    out_dir: Annotated[Path, typer.Option(help="File mode: where outputs go")] = Path("out"),
    workers: Annotated[int, typer.Option(min=1, help="Bytewax worker threads")] = 1,
    to_end: Annotated[
        bool, typer.Option("--to-end/--follow", help="Kafka mode: stop at the end of the topics")
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
    summary: Annotated[bool, typer.Option(help="Print a summary at the end")] = True,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus /metrics here (0: off; SALVAGE_METRICS_PORT)"),
    ] = None,
) -> None:
    """Run the recovery dataflow (file mode with --input, else Kafka mode)."""
    from flows.recovery import FlowSpec
    from salvage.runner import kafka_available, render_summary, run_flow, summarise
    from sinks.redis_store import redis_available

    settings = _settings(
        shards=shards,
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        metrics_port=metrics_port,
    )
    _serve_metrics(settings.metrics_port)
    if settings.shards < workers:
        settings = settings.model_copy(update={"shards": workers})
    use_store = bool(settings.redis_url) and redis_available(
        settings.redis_url,
        settings.redis_password.get_secret_value() if settings.redis_password else None,
    )
    if settings.redis_url and not use_store:
        console.print("[yellow]no Redis answers: running without the case store[/yellow]")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if input:
        for p in input:
            if not p.is_file():
                console.print(f"[red]no such event log: {p}[/red]")
                raise typer.Exit(2)
        out_dir.mkdir(parents=True, exist_ok=True)
        spec = FlowSpec(settings, inputs=list(input), out_dir=out_dir, case_store=use_store)
        secs = run_flow(spec, workers)
        console.print(f"file mode: done in {secs:.1f}s -> {out_dir}/")
        if summary:
            render_summary(summarise(out_dir), out_dir, console)
        return
    with kafka_available(settings, console.print) as live:
        spec = FlowSpec(live, to_end=to_end, case_store=use_store)
        secs = run_flow(spec, workers)
        console.print(f"kafka mode: done in {secs:.1f}s")


@app.command()
def broker(
    port: Annotated[int | None, typer.Option(help="Loopback port (default: a free one)")] = None,
    partitions: Annotated[int | None, typer.Option(help="Partitions per topic")] = None,
) -> None:
    """Run the embedded Kafka-compatible broker in the foreground, with Salvage's topics."""
    from connectors.broker import EmbeddedBroker, ensure_topics

    settings = _settings(topic_partitions=partitions)
    with EmbeddedBroker(port=port, silent=True) as b:
        conf = {"bootstrap.servers": b.bootstrap}
        ensure_topics(
            conf,
            list(settings.input_topics().values()) + settings.output_topics(),
            settings.topic_partitions,
        )
        print(b.bootstrap, flush=True)
        console.print(f"broker up: export SALVAGE_KAFKA_BOOTSTRAP={b.bootstrap}  (Ctrl-C stops it)")
        try:
            while b.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass


@app.command()
def replay(
    log: Annotated[Path, typer.Argument(help="Event log (JSONL) to publish")],
    kafka_bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers")] = None,
) -> None:
    """Publish an event log to the input topics, keyed by order id, with a progress bar."""
    from salvage.runner import publish_log

    settings = _settings(kafka_bootstrap=kafka_bootstrap)
    if not settings.kafka_bootstrap:
        console.print(
            "[red]replay needs a broker: set SALVAGE_KAFKA_BOOTSTRAP or --kafka-bootstrap[/red]"
        )
        raise typer.Exit(2)
    if not log.is_file():
        console.print(f"[red]no such event log: {log}[/red]")
        raise typer.Exit(2)
    with _progress() as bar:
        task = bar.add_task(f"publishing {log.name}", total=log.stat().st_size)
        counts = publish_log(settings, log, lambda done, _t: bar.update(task, completed=done))
    for topic, n in sorted(counts.items()):
        console.print(f"  {topic}: {n:,} messages")


@app.command()
def demo(
    orders: Annotated[int, typer.Option(min=100, help="Orders to simulate")] = 5000,
    scenario: Annotated[str, typer.Option(help="Simulator scenario")] = "launch-week-backlog",
    out_dir: Annotated[Path, typer.Option(help="Where the demo writes its files")] = Path(
        "demo-out"
    ),
    seed: Annotated[int, typer.Option(help="Simulator seed")] = 7,
) -> None:
    """Simulate a brand, publish it to Kafka, run the pipeline, and show what happened."""
    from connectors.simulator import write_log
    from flows.recovery import FlowSpec
    from salvage.runner import (
        consume_topic,
        kafka_available,
        publish_log,
        render_summary,
        run_flow,
        summarise,
    )
    from sinks.redis_store import redis_available

    started = time.perf_counter()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    settings = _settings()
    _serve_metrics(settings.metrics_port)
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
    use_store = bool(settings.redis_url) and redis_available(settings.redis_url)
    if not use_store:
        console.print("[yellow]no Redis answers: running without the case store[/yellow]")
    with kafka_available(settings, console.print) as live:
        with _progress() as bar:
            task = bar.add_task("publishing to Kafka", total=log.stat().st_size)
            counts = publish_log(live, log, lambda done, _t: bar.update(task, completed=done))
        console.print("published " + ", ".join(f"{t}={n:,}" for t, n in sorted(counts.items())))
        console.print("running the recovery dataflow (Kafka mode, to the end of the topics)...")
        secs = run_flow(FlowSpec(live, to_end=True, case_store=use_store))
        console.print(f"dataflow finished in {secs:.1f}s; reading the output topics...")
        for topic, name in (
            (live.topic_interventions, "interventions.jsonl"),
            (live.topic_lane_alerts, "lane_alerts.jsonl"),
            (live.topic_dead_letters, "dead_letters.jsonl"),
        ):
            consume_topic(live, topic, out_dir / name, group="salvage-demo")
    render_summary(summarise(out_dir), out_dir, console)
    if use_store:
        console.print(f"Case store: Redis {settings.redis_url} (keys salvage:case:<order_id>)")
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


def main() -> None:  # pragma: no cover
    app()
