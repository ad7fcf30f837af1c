"""Example downstream consumer of Salvage's ``interventions`` topic (for messaging teams).

How the trigger contract is meant to be used, with nothing but confluent-kafka and the standard
library (copy it into your messaging service):

* a **consumer group** (scale out by starting more copies; Kafka splits the partitions);
* **at-least-once**: offsets are committed only after a batch has been handled, so a crash
  redelivers, never skips;
* **dedupe on ``trigger_id``**: Salvage's ids are deterministic (same case update, same action,
  same id), so a replayed or restarted pipeline, or a redelivery after a crash here, repeats ids.
  This keeps the last ``--dedupe-size`` ids in memory; a real service keeps them in its own store
  until the trigger expires (e.g. Redis ``SET trigger:<id> 1 NX EXAT <expires_at>``);
* **honour ``expires_at``**: an intervention that arrives after it expired is dropped, not sent
  (a reassurance about a parcel that has since arrived helps nobody);
* **skip holdouts** defensively (Salvage never publishes them; the control group gets nothing);
* **bad messages** are counted and skipped, never fatal.

    python examples/trigger_consumer.py --bootstrap localhost:9092 --topic interventions

``send`` only prints here; replace it with your email/SMS/CRM call, and make that call idempotent
on ``trigger_id`` too if the channel allows it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError

REQUIRED = ("trigger_id", "order_id", "action", "expires_at")


@dataclass
class Stats:
    sent: list[str] = field(default_factory=list)  # trigger ids handed to send()
    duplicates: int = 0
    expired: int = 0
    holdouts: int = 0
    invalid: int = 0

    def summary(self) -> str:
        return (
            f"sent {len(self.sent)}, duplicates {self.duplicates}, expired {self.expired}, "
            f"holdouts {self.holdouts}, invalid {self.invalid}"
        )


class Dedupe:
    """The last ``size`` trigger ids seen (insertion order; the oldest is forgotten first)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, trigger_id: str) -> bool:
        if trigger_id in self._ids:
            return True
        self._ids[trigger_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return False


def print_send(trigger: dict) -> None:
    print(
        f"send {trigger['action']:<22} order {trigger['order_id']} "
        f"(priority {trigger.get('priority', '-')}, trigger {trigger['trigger_id']})"
    )


def handle(
    value: bytes | None,
    dedupe: Dedupe,
    stats: Stats,
    now: datetime,
    send: Callable[[dict], None],
) -> None:
    """One message: validate, dedupe, check expiry, send."""
    try:
        trigger = json.loads(value or b"")
        if not isinstance(trigger, dict) or any(k not in trigger for k in REQUIRED):
            raise ValueError("not a trigger")
        expires = datetime.fromisoformat(str(trigger["expires_at"]).replace("Z", "+00:00"))
    except ValueError:
        stats.invalid += 1
        return
    if trigger.get("holdout"):
        stats.holdouts += 1
    elif dedupe.seen(trigger["trigger_id"]):
        stats.duplicates += 1
    elif expires <= now:
        stats.expired += 1
    else:
        send(trigger)
        stats.sent.append(trigger["trigger_id"])


def consume(
    conf: dict,
    topic: str,
    group: str,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    send: Callable[[dict], None] = print_send,
    dedupe_size: int = 100_000,
    idle_exit_s: float | None = None,
    max_messages: int | None = None,
) -> Stats:
    """Consume until ``idle_exit_s`` without messages, ``max_messages``, or Ctrl-C."""
    consumer = Consumer(
        {
            **conf,
            "group.id": group,
            "enable.auto.commit": False,  # commit after handling: at-least-once
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    assigned: list[float] = []  # when the group gave us partitions (joining takes a few seconds)
    consumer.subscribe([topic], on_assign=lambda _c, _p: assigned.append(time.monotonic()))
    stats, dedupe = Stats(), Dedupe(dedupe_size)
    seen = 0
    last = 0.0
    try:
        while max_messages is None or seen < max_messages:
            msgs = consumer.consume(500, 0.5)
            if not msgs:
                quiet_since = max(last, assigned[-1]) if assigned else None
                if idle_exit_s is not None and quiet_since is not None:
                    if time.monotonic() - quiet_since > idle_exit_s:
                        break
                continue
            last = time.monotonic()
            at = now()
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        print(f"consumer error: {err}", file=sys.stderr)
                    continue
                seen += 1
                handle(msg.value(), dedupe, stats, at, send)
            consumer.commit(asynchronous=False)  # the batch is handled: move on
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return stats


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    ap.add_argument("--topic", default="interventions")
    ap.add_argument("--group", default="messaging-example", help="consumer group id")
    ap.add_argument("--dedupe-size", type=int, default=100_000)
    ap.add_argument(
        "--now",
        help="treat this ISO time as now when checking expires_at (replays of simulated, "
        "historical triggers: e.g. 2026-03-10T00:00:00Z)",
    )
    ap.add_argument("--idle-exit", type=float, help="stop after this many seconds without data")
    ap.add_argument("--max-messages", type=int)
    args = ap.parse_args(argv)
    fixed = (
        datetime.fromisoformat(args.now.replace("Z", "+00:00")) if args.now is not None else None
    )
    stats = consume(
        {"bootstrap.servers": args.bootstrap},
        args.topic,
        args.group,
        now=(lambda: fixed) if fixed is not None else (lambda: datetime.now(UTC)),
        dedupe_size=args.dedupe_size,
        idle_exit_s=args.idle_exit,
        max_messages=args.max_messages,
    )
    print(stats.summary(), file=sys.stderr)


if __name__ == "__main__":
    main()
