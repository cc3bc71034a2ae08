"""``platform-tasks``: the container commands (worker, beat) and the operator's tools."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from platform_tasks.queues import QUEUE_NAMES, policy_for
from platform_tasks.settings import Settings, SettingsError, load_settings


class UsageError(Exception):
    """A command-line value the command cannot use; printed as one line, exit status 2."""


def _json_argument(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{what} is not valid JSON: {error}") from None


def _import_modules(modules: Sequence[str]) -> None:
    """Import the ``--include`` modules: tasks and signal handlers beyond the platform's own.

    Done in the main process before the pool starts, so prefork children inherit them.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            # Only a misspelt name is a usage error; a module that fails its own imports is
            # a bug to see in full.
            if error.name is None or not f"{module}.".startswith(f"{error.name}."):
                raise
            raise UsageError(f"--include {module}: no module named {error.name!r}") from None


def _worker_argv(
    queue: str, settings: Settings, concurrency: int | None, pool: str | None = None,
    member: int | None = None,
) -> list[str]:
    policy = policy_for(queue)
    node = queue if member is None else f"{queue}-{member}"
    return [
        # Quiet: no start-up banner printed around the logging pipeline (the first log
        # lines say what it said).
        "--quiet",
        "worker",
        f"--queues={queue}",
        f"--pool={pool or policy.pool}",
        # A group member is one single-loop process: the group's size is its concurrency.
        f"--concurrency={1 if member is not None else concurrency or policy.concurrency}",
        f"--prefetch-multiplier={policy.prefetch_multiplier}",
        f"--hostname={node}@%h",
        f"--loglevel={settings.log_level}",
        "--without-gossip",
        # Mingle asks the other workers for their revoked ids and waits a second for the
        # answers, at start-up and again after every reconnection (a failover). Revoked ids
        # live in Redis here (loaded at start, see worker_hooks), so that second is waste.
        "--without-mingle",
    ]


def cmd_worker(options: argparse.Namespace, settings: Settings) -> int:
    policy = policy_for(options.queue)
    pool = options.pool or policy.pool
    concurrency = options.concurrency or policy.concurrency
    if concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, not {concurrency}")
    if options.member is not None:
        return _run_worker(options, settings, pool, member=options.member)
    if pool == "solo" and concurrency > 1:
        return _run_worker_group(options, settings, concurrency)
    return _run_worker(options, settings, pool, member=None)


def _run_worker(options: argparse.Namespace, settings: Settings, pool: str,
                member: int | None) -> int:
    from platform_tasks.observability import multiprocess_dir

    if member is None:
        # Before anything imports prometheus_client (the tasks do): pool processes must
        # count into files the main process can merge.
        metrics_dir: Path | None = multiprocess_dir.prepare(settings)
    else:
        # A group member counts into its supervisor's directory, which serves /metrics;
        # emptying it here would erase the other members' counts.
        from platform_tasks.worker_group import die_with_parent

        if options.supervisor_pid <= 0:
            raise UsageError("--member is for the worker group's supervisor to use: it needs "
                             "--supervisor-pid")
        die_with_parent(options.supervisor_pid)
        metrics_dir = None
        if not os.environ.get(multiprocess_dir.ENV_VAR):
            raise UsageError("--member is for the worker group's supervisor to use: "
                             f"{multiprocess_dir.ENV_VAR} is not set")
        from platform_tasks import held_ledger

        # What this member holds, for its replacement should it die (what its predecessor
        # left is put back as soon as this one consumes).
        held_ledger.open_for_member(held_ledger.ledger_file(settings, options.queue, member))
    from platform_tasks import heartbeat, worker_hooks
    from platform_tasks.app import create_app
    from platform_tasks.observability import worker_metrics
    from platform_tasks.observability.logging import route_worker_messages

    policy = policy_for(options.queue)
    app = create_app(settings)
    _import_modules(options.include)
    # A cold shutdown (SIGQUIT, Ctrl-C) gives running tasks this long before requeueing them;
    # SIGTERM's warm shutdown lets them finish, bounded by their hard time limit.
    app.conf.worker_soft_shutdown_timeout = float(policy.soft_shutdown_seconds)
    worker_hooks.install(app)
    if pool == "solo":
        from platform_tasks import result_writes, solo_limits
        from platform_tasks.observability import held_lines

        solo_limits.install()
        # Tasks run on the consumer loop's own thread, which flushes held lines every turn
        # and confirms the results it sent before each turn's acks.
        held_lines.enable()
        result_writes.enable()
    # The solo pool runs each task on the consumer loop itself: a long task is not a wedge.
    heartbeat.install(settings, options.queue, watch_loop=pool != "solo", member=member)
    if settings.metrics_port:
        worker_metrics.connect_signals()
        if member is None:
            port = worker_metrics.start_worker_metrics(
                options.queue, settings.metrics_host, settings.metrics_port
            )
            logging.getLogger(__name__).info(
                "worker metrics on %s:%d/metrics", settings.metrics_host, port
            )
        else:
            worker_metrics.start_group_member_metrics(options.queue)
    route_worker_messages()
    try:
        app.worker_main(
            _worker_argv(options.queue, settings, options.concurrency, pool, member)
        )
    finally:
        if settings.metrics_dir is None and metrics_dir is not None:
            multiprocess_dir.remove(metrics_dir)
    return 0


def _run_worker_group(options: argparse.Namespace, settings: Settings, size: int) -> int:
    from platform_tasks.heartbeat import freshness_limit, liveness_file
    from platform_tasks.observability import multiprocess_dir
    from platform_tasks.worker_group import WorkerGroup

    metrics_dir = multiprocess_dir.prepare(settings)
    if settings.metrics_port:
        from platform_tasks.observability import worker_metrics

        port = worker_metrics.start_worker_metrics(
            options.queue, settings.metrics_host, settings.metrics_port
        )
        logging.getLogger(__name__).info(
            "worker metrics on %s:%d/metrics", settings.metrics_host, port
        )
    supervisor_pid = os.getpid()

    def member_argv(index: int) -> list[str]:
        argv = [sys.executable, "-m", "platform_tasks", "worker", "--queue", options.queue,
                "--pool", "solo", "--member", str(index),
                "--supervisor-pid", str(supervisor_pid)]
        for module in options.include:
            argv += ["--include", module]
        return argv

    group = WorkerGroup(
        options.queue, size, member_argv,
        lambda index: liveness_file(settings, options.queue, index),
        liveness_file(settings, options.queue),
        stale_after_seconds=3 * freshness_limit(settings),
    )
    try:
        return group.run()
    finally:
        if settings.metrics_dir is None:
            multiprocess_dir.remove(metrics_dir)


def cmd_beat(options: argparse.Namespace, settings: Settings) -> int:
    from platform_tasks.app import create_app

    app = create_app(settings)
    _import_modules(options.include)
    app.start(["--quiet", "beat", f"--loglevel={settings.log_level}"])
    return 0


def cmd_monitor(options: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from platform_tasks.monitor import serve

    # As a container's PID 1 the process gets no default SIGTERM action: without a handler a
    # pod deletion would wait out its whole grace period.
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    serve(settings, stop)
    return 0


def cmd_health(options: argparse.Namespace, settings: Settings) -> int:
    import time

    from platform_tasks.heartbeat import (
        freshness_limit,
        last_alive,
        last_seen,
        last_seen_on_host,
        liveness_file,
        worker_hostname,
    )

    limit = freshness_limit(settings)
    if options.local:
        what = f"worker for queue {options.queue} (file {liveness_file(settings, options.queue)})"
        seen = last_alive(settings, options.queue)
    else:
        if options.hostname:
            what = f"{options.hostname} on queue {options.queue}"
            seen = last_seen(settings, options.queue, options.hostname)
        else:
            what = (f"{worker_hostname(options.queue)} (or a member of its worker group) on "
                    f"queue {options.queue}")
            seen = last_seen_on_host(settings, options.queue)
    if seen is None:
        print(f"unhealthy: no heartbeat from {what}", file=sys.stderr)
        return 1
    age = time.time() - seen
    if age > limit:
        print(f"unhealthy: {what} last beat {age:.1f}s ago (limit {limit:g}s)",
              file=sys.stderr)
        return 1
    print(f"healthy: {what} beat {age:.1f}s ago")
    return 0


def cmd_enqueue(options: argparse.Namespace, settings: Settings) -> int:
    from platform_tasks.producer import TaskProducer

    args = _json_argument(options.args, "--args")
    kwargs = _json_argument(options.kwargs, "--kwargs")
    if not isinstance(args, list):
        raise UsageError("--args must be a JSON list, e.g. '[2, 3]'")
    if not isinstance(kwargs, dict):
        raise UsageError("--kwargs must be a JSON object, e.g. '{\"user_email\": \"a@b.c\"}'")
    with TaskProducer(settings) as producer:
        task_id = producer.enqueue(
            options.task,
            queue=options.queue,
            args=args,
            kwargs=kwargs,
            countdown=options.countdown,
            idempotency_key=options.idempotency_key,
            correlation_id=options.correlation_id,
        )
        print(task_id)
        if options.wait is None:
            return 0
        try:
            outcome = producer.wait(task_id, options.wait)
        except TimeoutError as error:
            print(f"platform-tasks: {error}", file=sys.stderr)
            return 1
    print(json.dumps(dataclasses.asdict(outcome), default=str))
    # A script (or `helm test`) must not read a failed task as success.
    return 0 if outcome.state == "SUCCESS" else 1


def cmd_status(options: argparse.Namespace, settings: Settings) -> int:
    from platform_tasks.producer import TaskProducer

    with TaskProducer(settings) as producer:
        outcome = producer.status(options.task_id)
    print(json.dumps(dataclasses.asdict(outcome), default=str))
    return 0


def cmd_revoke(options: argparse.Namespace, settings: Settings) -> int:
    from platform_tasks.producer import TaskProducer

    with TaskProducer(settings) as producer:
        producer.revoke(options.task_id, terminate=options.terminate)
    print(f"revoked {options.task_id}")
    return 0


def cmd_queues(options: argparse.Namespace, settings: Settings) -> int:
    from platform_tasks.inspection import queue_depths
    from platform_tasks.redis_client import connect

    client = connect(settings)
    try:
        depths = queue_depths(client)
    finally:
        client.close()
    if options.json:
        print(json.dumps([depth.as_dict() for depth in depths]))
        return 0
    print(f"{'queue':<10} {'ready':>8} {'by priority':<24} {'unacked':>8} {'total':>8}")
    for depth in depths:
        by_priority = ",".join(f"{p}:{n}" for p, n in depth.ready_by_priority.items() if n) or "-"
        print(f"{depth.queue:<10} {depth.ready:>8} {by_priority:<24} "
              f"{depth.unacked:>8} {depth.total:>8}")
    return 0


def _dead_letter_filters(options: argparse.Namespace) -> Any:
    from platform_tasks.dead_letters import Filters

    return Filters(queue=options.queue, task=options.task, reason=options.reason)


def cmd_dead_letters_list(options: argparse.Namespace, settings: Settings) -> int:
    from platform_tasks.dead_letters import select, summary_row
    from platform_tasks.redis_client import connect

    client = connect(settings)
    try:
        found = select(client, _dead_letter_filters(options), options.limit)
    finally:
        client.close()
    if options.json:
        print(json.dumps([entry.as_dict() for _, entry in found], default=str))
        return 0
    header = ("id", "dead at (UTC)", "reason", "queue", "task", "task id", "exception")
    rows = [header, *(summary_row(entry) for _, entry in found)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())
    return 0


def cmd_dead_letters_show(options: argparse.Namespace, settings: Settings) -> int:
    from platform_tasks.dead_letters import find
    from platform_tasks.redis_client import connect

    client = connect(settings)
    try:
        _, entry = find(client, options.id)
    finally:
        client.close()
    print(json.dumps(entry.as_dict(), default=str, indent=2))
    return 0


def cmd_dead_letters_replay(options: argparse.Namespace, settings: Settings) -> int:
    from platform_tasks import dead_letters
    from platform_tasks.producer import TaskProducer
    from platform_tasks.redis_client import connect

    filters = _dead_letter_filters(options)
    if options.id is None and not options.all:
        raise UsageError("name a dead letter's id, or --all (with filters) to replay many")
    if options.id is not None and (options.all or filters.any):
        raise UsageError("give either an id or --all with filters, not both")
    failed = 0
    with TaskProducer(settings) as producer:
        client = connect(settings)
        try:
            if options.id is not None:
                entries = [dead_letters.find(client, options.id)]
            else:
                entries = dead_letters.select(client, filters, options.limit)

            def enqueue(entry: dead_letters.DeadLetter) -> str:
                # Without the producer's idempotency key: it would hand back the dead task's
                # id and publish nothing. A payment keeps its own key inside its kwargs.
                return producer.enqueue(
                    entry.task_name or "", queue=entry.queue or "", args=entry.args or (),
                    kwargs=entry.kwargs, correlation_id=entry.correlation_id,
                )

            for entry, outcome in dead_letters.replay(entries, enqueue, client):
                if isinstance(outcome, BaseException):
                    failed += 1
                    print(f"platform-tasks: not replayed {entry.id}: "
                          f"{type(outcome).__name__}: {outcome}", file=sys.stderr)
                else:
                    print(outcome)
        finally:
            client.close()
    return 1 if failed else 0


def cmd_dead_letters_purge(options: argparse.Namespace, settings: Settings) -> int:
    from platform_tasks.dead_letters import purge
    from platform_tasks.redis_client import connect

    if not options.yes:
        raise UsageError("purge deletes dead letters for good; add --yes to confirm")
    client = connect(settings)
    try:
        removed = purge(client, _dead_letter_filters(options))
    finally:
        client.close()
    print(f"purged {removed} dead letters")
    return 0


def cmd_dev(options: argparse.Namespace, settings: Settings | None) -> int:
    from platform_tasks.devstack.dev import run_dev

    exit_code: int = run_dev(options.run_dir, demo=not options.no_demo, flower=options.flower)
    return exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="platform-tasks",
        description="Run and operate the platform-tasks background-job platform.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser("worker", help="run a worker for one queue (container command)")
    worker.add_argument("--queue", required=True, choices=QUEUE_NAMES)
    worker.add_argument("--concurrency", type=int, default=None,
                        help="override the queue's concurrency")
    worker.add_argument("--pool", choices=("prefork", "threads", "solo"), default=None,
                        help="override the queue's pool (threads enforce no time limits; "
                        "solo with a concurrency of N runs N single-loop processes)")
    # Internal: how a worker group's supervisor starts its members.
    worker.add_argument("--member", type=int, default=None, help=argparse.SUPPRESS)
    worker.add_argument("--supervisor-pid", type=int, default=0, help=argparse.SUPPRESS)
    _add_include_option(worker)
    worker.set_defaults(handler=cmd_worker)

    beat = commands.add_parser("beat", help="run the scheduler (one leader via a Redis lock)")
    _add_include_option(beat)
    beat.set_defaults(handler=cmd_beat)

    monitor = commands.add_parser(
        "monitor", help="serve queue, beat and broker metrics (one per deployment)"
    )
    monitor.set_defaults(handler=cmd_monitor)

    health = commands.add_parser(
        "health", help="exit 0 when this host's worker for a queue has a fresh heartbeat (probe)"
    )
    health.add_argument("--queue", required=True, choices=QUEUE_NAMES)
    health.add_argument("--hostname", default=None,
                        help="worker node name (default: <queue>@<this host>)")
    health.add_argument("--local", action="store_true",
                        help="check the heartbeat file on this host only, not Redis "
                        "(the liveness probe)")
    health.set_defaults(handler=cmd_health)

    enqueue = commands.add_parser("enqueue", help="enqueue a task by name, print its id")
    enqueue.add_argument("task", help="task name, e.g. platform_tasks.default.add_numbers")
    enqueue.add_argument("--queue", required=True)
    enqueue.add_argument("--args", default="[]", help="JSON list of positional arguments")
    enqueue.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments")
    enqueue.add_argument("--countdown", type=float, default=None, help="seconds to wait")
    enqueue.add_argument("--idempotency-key", default=None)
    enqueue.add_argument("--correlation-id", default=None)
    enqueue.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                         help="wait this long for the result and print it")
    enqueue.set_defaults(handler=cmd_enqueue)

    status = commands.add_parser("status", help="print a task's state and result as JSON")
    status.add_argument("task_id")
    status.set_defaults(handler=cmd_status)

    revoke = commands.add_parser("revoke", help="revoke a task")
    revoke.add_argument("task_id")
    revoke.add_argument("--terminate", action="store_true", help="also stop it if running")
    revoke.set_defaults(handler=cmd_revoke)

    queues = commands.add_parser("queues", help="depth of each queue (ready, priority, unacked)")
    queues.add_argument("--json", action="store_true")
    queues.set_defaults(handler=cmd_queues)

    _add_dead_letter_commands(commands)

    dev = commands.add_parser("dev", help="run the whole platform locally with a demo")
    dev.add_argument("--run-dir", type=Path, default=None, help="where configs and logs go")
    dev.add_argument("--no-demo", action="store_true", help="start the stack without the demo")
    dev.add_argument("--flower", action="store_true", help="also start Flower")
    dev.set_defaults(handler=cmd_dev, needs_settings=False)
    return parser


def _add_include_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--include", action="append", default=[], metavar="MODULE",
                        help="also import this module (extra tasks or signal handlers; "
                        "repeatable)")


def _add_dead_letter_commands(commands: Any) -> None:
    from platform_tasks.dead_letters import REASONS

    def filters(parser: argparse.ArgumentParser, limit: int | None) -> None:
        parser.add_argument("--queue", default=None, help="only entries from this queue")
        parser.add_argument("--task", default=None, help="only entries of this task name")
        parser.add_argument("--reason", choices=REASONS, default=None,
                            help="only entries given up on for this reason")
        parser.add_argument("--limit", type=int, default=limit, metavar="N",
                            help=f"at most N entries, newest first (default: "
                            f"{limit if limit is not None else 'all'})")

    group = commands.add_parser(
        "dead-letters", help="tasks and messages given up on: list, show, replay, purge"
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="the entries, newest first")
    filters(listing, 50)
    listing.add_argument("--json", action="store_true", help="the full entries as JSON")
    listing.set_defaults(handler=cmd_dead_letters_list)

    show = actions.add_parser("show", help="one entry with its original message, as JSON")
    show.add_argument("id")
    show.set_defaults(handler=cmd_dead_letters_show)

    replay = actions.add_parser(
        "replay", help="enqueue again onto the original queue, drop the entry, print the new "
        "task id"
    )
    replay.add_argument("id", nargs="?", default=None)
    replay.add_argument("--all", action="store_true", help="every entry matching the filters")
    filters(replay, None)
    replay.set_defaults(handler=cmd_dead_letters_replay)

    purge = actions.add_parser("purge", help="delete the entries matching the filters")
    filters(purge, None)
    purge.add_argument("--yes", action="store_true", help="confirm the deletion")
    purge.set_defaults(handler=cmd_dead_letters_purge)


#: Commands whose stdout is the logs; the others print their answer there and log to stderr.
_LOGS_ON_STDOUT = frozenset({"worker", "beat", "monitor", "dev"})


def _configure_logging(command: str, settings: Settings | None) -> None:
    from platform_tasks.observability import configure_logging

    stream = sys.stdout if command in _LOGS_ON_STDOUT else sys.stderr
    # `dev` runs without settings: console lines for the person watching the terminal.
    configure_logging(settings, process=command, stream=stream)


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    try:
        if getattr(options, "needs_settings", True):
            settings: Settings | None = load_settings()
        else:
            settings = None
        _configure_logging(options.command, settings)
        result: int = options.handler(options, settings)
        return result
    except SettingsError as error:
        print(f"platform-tasks: configuration error: {error}", file=sys.stderr)
        return 2
    except UsageError as error:
        print(f"platform-tasks: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        from platform_tasks.dead_letters import DeadLetterError
        from platform_tasks.producer import ProducerError

        if isinstance(error, DeadLetterError):
            print(f"platform-tasks: {error}", file=sys.stderr)
            return 1
        # Before the refusals: the producer's BrokerUnavailableError is one of these too.
        if isinstance(error, RedisError | OperationalError):
            print(f"platform-tasks: broker unavailable: {type(error).__name__}: {error}",
                  file=sys.stderr)
            return 1
        if isinstance(error, ProducerError):
            outcome = "refused" if error.refusal else "not done"
            print(f"platform-tasks: {outcome}: {type(error).__name__}: {error}",
                  file=sys.stderr)
            return 2 if error.refusal else 1
        raise
