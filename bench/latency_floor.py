"""The floor under any Redis task queue's light-load latency on this machine.

Usage: ``.venv/bin/python bench/latency_floor.py [--probes 100] [--spacing-ms 20]
[--rounds 3] [--smoke]``

What ``bench/compare.py``'s ``latency`` scenario times for a task system (enqueue -> the task
starts, one probe every 20 ms on an idle worker), with every system taken away: one process
``LPUSH``es a key, another, blocked in ``BRPOP`` on a plain ``redis-server``, pops it and
stamps the time it did. No serialization, no task machinery: a push, a wake-up and a pop.
Each round sends warm-up probes first, then ``--probes`` timed ones. Prints p50/p95/p99 per
round and their medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_procs import PlainRedis, argv_python, clean_env, managed

LIST = "latency-floor"
STAMPS = "latency-floor:popped"
WARMUP = 21


def consume(port: int) -> int:
    """The consumer: pop keys forever, stamping each with the time it was popped."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    while True:
        popped = client.brpop([LIST], timeout=1)
        if popped is not None:
            client.hset(STAMPS, popped[1], time.time())


def _round(client: object, probes: int, spacing: float) -> list[float]:
    import redis

    assert isinstance(client, redis.Redis)
    sent: dict[bytes, float] = {}
    for index in range(WARMUP + probes):
        key = uuid.uuid4().hex.encode()
        started = time.time()
        client.lpush(LIST, key)
        if index >= WARMUP:
            sent[key] = started
        time.sleep(spacing)
    deadline = time.monotonic() + 30
    while True:
        popped = client.hgetall(STAMPS)
        if all(key in popped for key in sent):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the consumer did not pop every probe within 30 s")
        time.sleep(0.05)
    client.delete(STAMPS)
    return [(float(popped[key]) - started) * 1000 for key, started in sent.items()]


def percentiles(values: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--spacing-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true",
                        help="10 probes, 1 round: checks the script runs, not the timings")
    parser.add_argument("--consume", type=int, metavar="PORT", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.consume is not None:
        return consume(options.consume)
    probes, rounds = (10, 1) if options.smoke else (options.probes, options.rounds)
    run_dir = Path(tempfile.mkdtemp(prefix="platform-tasks-floor-"))
    server = PlainRedis(run_dir)
    server.start()
    consumer = managed("floor-consumer",
                       argv_python(__file__, "--consume", str(server.port)), clean_env({}),
                       run_dir)
    consumer.start()
    results: list[tuple[float, float, float]] = []
    try:
        with server.client(0) as client:
            for index in range(rounds):
                cut = percentiles(_round(client, probes, options.spacing_ms / 1000))
                results.append(cut)
                print(f"round {index + 1}: p50 {cut[0]:.3f}  p95 {cut[1]:.3f}  "
                      f"p99 {cut[2]:.3f} ms", flush=True)
    finally:
        consumer.stop(timeout=10)
        server.stop()
    medians = [statistics.median(values) for values in zip(*results, strict=True)]
    print(f"LPUSH -> BRPOP, {probes} probes {options.spacing_ms:g} ms apart, median of "
          f"{rounds}: p50 {medians[0]:.3f}  p95 {medians[1]:.3f}  p99 {medians[2]:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
