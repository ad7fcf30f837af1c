"""Which partition Kafka puts a keyed record on: ``murmur2_random``, the Java client's partitioner.

``salvage replay`` (and every producer of the input topics configured like it) keys each event by
its ``order_id``; librdkafka's ``murmur2_random`` partitioner then sends it to
``(murmur2(key) & 0x7fffffff) % partitions``. File mode lays a log out the same way (see
``salvage.flows.sources``), so an event's lateness is judged against the same neighbours in both
modes. Checked against the real producer in ``tests/connectors/test_partitioning.py``.
"""

from __future__ import annotations

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 hash of ``data`` (unsigned).

    >>> murmur2(b"21")  # Kafka's own test vector: -973932308 as a signed int
    3321034988
    """
    length = len(data)
    h = (_SEED ^ length) & _MASK
    n4 = length & ~3
    for i in range(0, n4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[n4 + 2] << 16
    if rest >= 2:
        h ^= data[n4 + 1] << 8
    if rest >= 1:
        h ^= data[n4]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_of(key: str, partitions: int) -> int:
    """The partition a record keyed by ``key`` lands on among ``partitions``."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions
