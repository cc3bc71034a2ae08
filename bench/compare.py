"""The platform side by side with the systems its users would otherwise run: one command.

Usage::

    .venv/bin/python bench/compare.py [--rounds 3] [--tasks 2000] [--scenario NAME ...]
        [--system NAME ...] [--big] [--json PATH] [--plot PATH.png] [--smoke]

Systems (every Redis is started here, on a free loopback port, and stopped at the end):

- ``platform``: ``platform-tasks worker --queue default`` as shipped (a group of 2
  single-loop processes, JSON logs at INFO, /metrics on) against a Sentinel topology
  configured as the chart does;
- ``platform-single-redis`` (only when named with ``--system``): the same worker and
  producer against one plain ``redis-server`` like the baselines' (no replicas, no
  Sentinels): what the Sentinel topology's extra processes cost when they share the cores;
- ``seed-celery``: Celery as its "First steps" tutorial sets it up (``tasks.py`` with
  ``Celery('tasks', broker=redis://…, backend=redis://…)``, ``celery -A tasks worker
  --loglevel=INFO -c 2``), results stored, on a plain ``redis-server``;
- ``dramatiq``: Dramatiq's Redis broker, ``dramatiq … --processes 2 --threads 8``;
- ``rq``: RQ's simple worker (``rq worker -w rq.worker.SimpleWorker``), one process.

Scenarios (all by default; ``--scenario`` picks some):

- ``drain``: tasks/s draining ``--tasks`` pre-enqueued no-op ``add`` tasks;
- ``mix``: tasks/s draining ``--mix-tasks`` tasks, one in five a Pillow thumbnail of a
  1280x960 JPEG, the rest a charge against a payment-gateway stub plus a Redis write (the
  platform runs its own ``make_thumbnail`` and ``process_payment`` on its ``media`` and
  ``payments`` workers);
- ``enqueue``: one producer, no worker: a loop of single enqueues and the bulk API;
- ``latency``: enqueue -> start p50/p95/p99, light (one probe every ``--probe-spacing-ms``
  on an idle worker) and heavy (probes right behind a backlog of ``--heavy-backlog``);
- ``scaling``: drain tasks/s with 1, 2 and 4 worker processes;
- ``depth``: ms per task for ``--depth-sample`` tasks with 10k and 100k waiting (and 1M
  with ``--big``);
- ``memory``: resident memory of every worker process after the drain;
- ``failover`` (platform only): Sentinel switch-master -> first task started after it.

Each round runs every scenario for every system, the systems' order reversed every other
round so drift in the machine's speed hits all of them; the table gives medians, min/max
and platform/baseline ratios. ``--smoke`` runs everything with tiny sizes in one round: it
checks that the harness works, not the timings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import structlog
from compare_procs import HarnessError, PlainRedis, argv_python, clean_env, managed
from compare_report import (
    Results,
    checkout,
    document,
    json_safe,
    machine,
    markdown,
    plot,
    table,
    versions,
    write_json,
)
from compare_scenarios import PLATFORM_ONLY, SCENARIOS, Measurement, Sizes, Trial
from compare_systems import (
    DramatiqSystem,
    PlatformSingleRedisSystem,
    PlatformSystem,
    RqSystem,
    SeedCelerySystem,
    SingleRedisBroker,
    System,
    Workload,
)

from platform_tasks.devstack.ports import LOOPBACK, free_port
from platform_tasks.devstack.redis_binary import find_redis_server
from platform_tasks.devstack.topology import SentinelTopology

SYSTEMS = ("platform", "platform-single-redis", "seed-celery", "dramatiq", "rq")
#: What runs without ``--system``: the platform as shipped and the baselines.
DEFAULT_SYSTEMS = ("platform", "seed-celery", "dramatiq", "rq")
THUMBNAIL_SIZES = ((256, 256), (128, 128))
IMAGE = "bench/source.jpg"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=2000, help="no-op tasks per drain")
    parser.add_argument("--mix-tasks", type=int, default=400)
    parser.add_argument("--enqueue-tasks", type=int, default=2000)
    parser.add_argument("--probes", type=int, default=100, help="latency probes per load")
    parser.add_argument("--probe-spacing-ms", type=float, default=20.0)
    parser.add_argument("--heavy-backlog", type=int, default=None,
                        help="no-op tasks ahead of the heavy-load probes (default: --tasks)")
    parser.add_argument("--depth-sample", type=int, default=2000)
    parser.add_argument("--big", action="store_true", help="also measure with 1M waiting")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS),
                        help="run only this scenario (repeatable)")
    parser.add_argument("--system", action="append", choices=list(SYSTEMS),
                        help="run only this system (repeatable; ratios need platform)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--plot", type=Path, help="write a PNG of the results here")
    parser.add_argument("--smoke", action="store_true",
                        help="every scenario and system, tiny sizes, one round")
    parser.add_argument("--from-json", type=Path, metavar="PATH",
                        help="run nothing: print the table and draw --plot from a saved run")
    parser.add_argument("--markdown", action="store_true",
                        help="with --from-json: print Markdown tables instead")
    parser.add_argument("--keep-run-dir", action="store_true",
                        help="keep the logs and Redis data of a successful run (a failed "
                             "run always keeps them)")
    return parser.parse_args(argv)


def sizes_from(options: argparse.Namespace) -> tuple[Sizes, int]:
    """The work per scenario and the number of rounds."""
    if options.smoke:
        return Sizes(tasks=20, mix_tasks=10, enqueue_tasks=20, probes=5, probe_spacing=0.005,
                     heavy_backlog=20, depths=(1000,), depth_sample=10, scaling=(1, 2)), 1
    depths = (10_000, 100_000, 1_000_000) if options.big else (10_000, 100_000)
    return Sizes(
        tasks=options.tasks,
        mix_tasks=options.mix_tasks,
        enqueue_tasks=options.enqueue_tasks,
        probes=options.probes,
        probe_spacing=options.probe_spacing_ms / 1000,
        heavy_backlog=options.heavy_backlog or options.tasks,
        depths=depths,
        depth_sample=options.depth_sample,
        scaling=(1, 2, 4),
    ), options.rounds


def make_image(media_root: Path) -> None:
    """A 1280x960 JPEG with detail in it (noise over a gradient), so decoding and resampling
    cost what a photo's would."""
    from PIL import Image

    noise = Image.effect_noise((1280, 960), 48).convert("RGB")
    gradient = Image.linear_gradient("L").resize((1280, 960)).convert("RGB")
    target = media_root / IMAGE
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.blend(noise, gradient, 0.5).save(target, "JPEG", quality=90)


@contextmanager
def gateway(run_dir: Path) -> Iterator[str]:
    """The platform's payment-gateway stub in a process of its own (never failing): the I/O
    the mix's charges do. Yields its URL."""
    port = free_port()
    process = managed("gateway", argv_python("-m", "platform_tasks.devstack.gateway",
                                             "--port", str(port)),
                      clean_env({}), run_dir)
    url = f"http://{LOOPBACK}:{port}"
    process.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):  # noqa: S310 - loopback
                    break
            except OSError:
                if not process.alive or time.monotonic() > deadline:
                    raise HarnessError(f"gateway stub did not start; see {process.log_path}"
                                       ) from None
                time.sleep(0.05)
        yield url
    finally:
        process.stop(10)


def start_systems(stack: ExitStack, names: list[str], run_dir: Path,
                  workload: Workload) -> list[System]:
    """Start the Redis servers the chosen systems need and build the systems."""
    systems: list[System] = []
    if "platform" in names:
        topology = stack.enter_context(SentinelTopology(
            run_dir / "topology", password=secrets.token_urlsafe(12),
            sentinel_password=secrets.token_urlsafe(12)))
        systems.append(PlatformSystem(run_dir, workload, topology))
    if "platform-single-redis" in names:
        # A Redis of its own: the platform's reset empties whole databases.
        (run_dir / "single-redis").mkdir()
        own = PlainRedis(run_dir / "single-redis")
        own.start()
        stack.callback(own.stop)
        systems.append(PlatformSingleRedisSystem(run_dir, workload, SingleRedisBroker(own)))
    baselines = [name for name in names if not name.startswith("platform")]
    if baselines:
        plain = PlainRedis(run_dir)
        plain.start()
        stack.callback(plain.stop)
        kinds: dict[str, type[SeedCelerySystem] | type[DramatiqSystem] | type[RqSystem]] = {
            "seed-celery": SeedCelerySystem, "dramatiq": DramatiqSystem, "rq": RqSystem}
        systems.extend(kinds[name](run_dir, workload, plain) for name in baselines)
    for system in systems:
        stack.callback(system.close)
    return systems


def _short(measurement: Measurement) -> str:
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}=n/a"
                     for key, value in measurement.items())


def _measure(trial: Trial, scenario: str, round_index: int, results: Results,
             lock: threading.Lock) -> None:
    started = time.monotonic()
    measurement = SCENARIOS[scenario](trial)
    with lock:
        results[scenario].setdefault(trial.system.name, []).append(measurement)
        print(f"round {round_index + 1} {scenario:<8} {trial.system.name:<12} "
              f"({time.monotonic() - started:5.1f}s) {_short(measurement)}", flush=True)


def _applies(scenario: str, system: System) -> bool:
    return scenario not in PLATFORM_ONLY or system.name == "platform"


def run_rounds(systems: list[System], scenarios: list[str], sizes: Sizes, rounds: int,
               *, concurrent: bool = False) -> Results:
    """Every scenario for every system, ``rounds`` times. One system at a time, alternating
    their order round by round; or, with ``concurrent`` (the smoke run, whose timings mean
    nothing), every system in a thread of its own at once."""
    results: Results = {scenario: {} for scenario in scenarios}
    lock = threading.Lock()
    for round_index in range(rounds):
        order = systems if round_index % 2 == 0 else list(reversed(systems))
        trials = {system.name: Trial(system, sizes, f"r{round_index + 1}-{system.name}")
                  for system in systems}
        if concurrent:
            _run_concurrently([trials[system.name] for system in order], scenarios,
                              round_index, results, lock)
            continue
        for scenario in scenarios:
            for system in order:
                if _applies(scenario, system):
                    _measure(trials[system.name], scenario, round_index, results, lock)
    return results


def _run_concurrently(trials: list[Trial], scenarios: list[str], round_index: int,
                      results: Results, lock: threading.Lock) -> None:
    errors: list[BaseException] = []

    def run(trial: Trial) -> None:
        try:
            for scenario in scenarios:
                if _applies(scenario, trial.system):
                    _measure(trial, scenario, round_index, results, lock)
        except BaseException as error:
            errors.append(error)
            raise

    threads = [threading.Thread(target=run, args=(trial,), name=trial.system.name)
               for trial in trials]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


class LoadSampler:
    """The 1-minute load average every 5 s during the run: how shared the machine was."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-sampler", daemon=True)

    def _run(self) -> None:
        while not self._done.wait(5.0):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def summary(self) -> dict[str, float | None]:
        if not self.samples:
            return {"min": None, "median": None, "max": None}
        return {"min": min(self.samples), "median": statistics.median(self.samples),
                "max": max(self.samples)}


def report_saved(options: argparse.Namespace) -> int:
    """``--from-json``: the table and plot of a run written earlier with ``--json``."""
    doc = json.loads(options.from_json.read_text())
    print(markdown(doc) if options.markdown else table(doc))
    if options.plot:
        plot(doc, options.plot)
    return 0


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if options.from_json:
        return report_saved(options)
    sizes, rounds = sizes_from(options)
    scenarios = options.scenario or list(SCENARIOS)
    names = options.system or list(DEFAULT_SYSTEMS)
    if "platform" not in names:
        scenarios = [scenario for scenario in scenarios if scenario not in PLATFORM_ONLY]
    # The producer side keeps structlog's defaults otherwise: a debug line per enqueue, timed.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    run_dir = Path(tempfile.mkdtemp(prefix="platform-tasks-compare-"))
    meta: dict[str, Any] = {
        "machine": machine(),
        "versions": versions(find_redis_server()),
        "checkout": checkout(),
        "settings": {"rounds": rounds, "systems": names, "scenarios": scenarios,
                     "smoke": options.smoke, **sizes.__dict__},
    }
    print(f"{meta['machine']}\n{meta['versions']}\n{meta['checkout']}\nrun dir (logs; removed "
          f"after a successful run unless --keep-run-dir): {run_dir}", flush=True)
    started = time.monotonic()
    with ExitStack() as stack:
        load = stack.enter_context(LoadSampler())
        media_root = run_dir / "media"
        make_image(media_root)
        gateway_url = stack.enter_context(gateway(run_dir))
        workload = Workload(media_root, IMAGE, THUMBNAIL_SIZES, gateway_url)
        systems = start_systems(stack, names, run_dir, workload)
        try:
            results = run_rounds(systems, scenarios, sizes, rounds,
                                 concurrent=options.smoke)
        except Exception:
            traceback.print_exc()
            print(f"run failed; logs in {run_dir}", file=sys.stderr)
            return 1
    if not options.keep_run_dir:
        # Deep queues leave hundreds of MB of Redis data (AOF on three nodes) behind.
        shutil.rmtree(run_dir, ignore_errors=True)
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    meta["machine"]["loadavg_after"] = list(machine()["loadavg"])
    meta["machine"]["load1_during"] = load.summary()
    doc = json_safe(document(results, meta))
    print(table(doc))
    print(f"\n{len(scenarios)} scenario(s) x {len(names)} system(s) x {rounds} round(s) in "
          f"{meta['elapsed_s']}s; 1-min load average during the run (2 = both cores busy): "
          f"{meta['machine']['load1_during']}")
    if options.json:
        write_json(doc, options.json)
    if options.plot:
        plot(doc, options.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
