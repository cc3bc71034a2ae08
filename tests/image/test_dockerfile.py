"""The container image: the Dockerfile is lint-clean and built the way the design asks, and
the venv its builder stage makes runs the image's commands against a real Redis topology.

The builder stage is replayed by ``built_image`` (conftest.py) from the Dockerfile itself, so
what runs here is what ``docker build`` installs; only the engine is missing.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from dockerfile_replay import (
    DOCKERFILE,
    DOCKERIGNORE,
    BuiltImage,
    Instruction,
    Stage,
    dockerignore_rules,
    exec_form,
    is_ignored,
    runtime_copied_paths,
    stage_env,
)

from platform_tasks import keys
from platform_tasks.devstack.ports import free_port
from platform_tasks.devstack.processes import ManagedProcess
from platform_tasks.devstack.topology import SentinelTopology
from platform_tasks.redis_client import connect
from platform_tasks.settings import load_settings

DIGEST_PINNED = re.compile(r"^[\w.\-/]+:[\w.\-]+@sha256:[0-9a-f]{64}$")


def run_in_image(
    image: BuiltImage, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``docker run IMAGE args...``: the entrypoint with the image's environment only."""
    return subprocess.run(
        image.argv(*args), env=env or image.env, cwd=image.workdir, capture_output=True,
        text=True, timeout=timeout, check=False,
    )


# -- the Dockerfile as written ------------------------------------------------------------------


def test_hadolint_finds_nothing_to_complain_about(hadolint_binary: Path) -> None:
    done = subprocess.run(
        [str(hadolint_binary), "--no-color", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_every_base_image_is_pinned_by_digest(dockerfile_stages: list[Stage]) -> None:
    names: set[str] = set()
    for stage in dockerfile_stages:
        if stage.base not in names:
            assert DIGEST_PINNED.match(stage.base), f"FROM {stage.base} is not pinned by digest"
        if stage.name:
            names.add(stage.name)
    assert dockerfile_stages[0].base.startswith("python:3.11-slim-bookworm@sha256:")


def test_dependencies_are_installed_before_the_code_is_copied(
    dockerfile_stages: list[Stage],
) -> None:
    builder = next(s for s in dockerfile_stages if s.name == "builder")
    dependencies, project = builder.of("RUN")
    assert exec_form(dependencies)[1:3] == ["scripts/image_install.py", "dependencies"]
    assert exec_form(project)[1:3] == ["scripts/image_install.py", "project"]
    order = builder.instructions

    def copied(instructions: list[Instruction]) -> set[str]:
        return {
            source for i in instructions if i.keyword == "COPY"
            for source in i.args.split()[:-1]
        }

    before = order[: order.index(dependencies)]
    between = order[order.index(dependencies) : order.index(project)]
    assert copied(before) == {"pyproject.toml", "scripts/image_install.py"}
    assert "src/" in copied(between)


def test_the_runtime_stage_takes_only_the_venv_and_runs_as_a_numeric_non_root_user(
    dockerfile_stages: list[Stage],
) -> None:
    runtime = dockerfile_stages[-1]
    assert all(i.flags == ("--from=builder",) for i in runtime.of("COPY"))
    assert runtime_copied_paths(runtime) == ["/opt/venv"]
    assert not any("pip" in i.args for i in runtime.of("RUN")), "nothing installed at runtime"
    user = runtime.of("USER")[-1].args
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"USER {user}: want numeric uid:gid"
    assert runtime.instructions.index(runtime.of("USER")[-1]) > max(
        runtime.instructions.index(i) for i in runtime.of("RUN")
    )
    env = stage_env(dockerfile_stages, len(dockerfile_stages) - 1)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_the_command_is_exec_form_without_a_shell(dockerfile_stages: list[Stage]) -> None:
    runtime = dockerfile_stages[-1]
    assert not runtime.of("SHELL")
    assert exec_form(runtime.of("ENTRYPOINT")[-1]) == ["platform-tasks"]
    assert exec_form(runtime.of("CMD")[-1]) == ["worker", "--queue", "default"]


def test_dockerignore_keeps_secrets_and_caches_out_of_the_context() -> None:
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    for kept in ("pyproject.toml", "README.md", "scripts/image_install.py",
                 "src/platform_tasks/cli.py", "src/platform_tasks/py.typed"):
        assert not is_ignored(kept, rules), kept
    for dropped in (".venv", ".git", ".run", ".run/dev-1/env.sh", ".env", ".pytest_cache",
                    "src/platform_tasks/__pycache__", "src/platform_tasks.egg-info",
                    "tests", "build", "dist", "deploy"):
        assert is_ignored(dropped, rules), dropped


# -- the image as built ---------------------------------------------------------------------


def test_the_wheel_holds_the_typed_package_and_no_tests(built_image: BuiltImage) -> None:
    wheels = list((built_image.rootfs / "wheels").glob("platform_tasks-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
    assert "platform_tasks/py.typed" in names
    assert {name.split("/")[0] for name in names} == {
        "platform_tasks", wheels[0].name.split("-py3")[0] + ".dist-info"
    }
    assert not [n for n in names if re.search(r"(^|/)(tests?|conftest)(/|\.py$)|/test_", n)]


def test_the_image_imports_the_package_from_its_venv_not_the_sources(
    built_image: BuiltImage,
) -> None:
    python = built_image.host_path("/opt/venv/bin/python")
    done = subprocess.run(
        [str(python), "-c", "import platform_tasks; print(platform_tasks.__file__)"],
        env=built_image.env, cwd=built_image.workdir, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(built_image.host_path("/opt/venv"))


@pytest.mark.parametrize(
    "args", [["--help"], ["worker", "--help"], ["beat", "--help"], ["monitor", "--help"]],
    ids=" ".join,
)
def test_the_image_commands_answer_help(built_image: BuiltImage, args: list[str]) -> None:
    before = built_image.files()
    done = run_in_image(built_image, *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: platform-tasks")
    assert built_image.files() == before, "the command wrote outside /tmp"


def test_without_broker_settings_the_default_command_names_the_variable(
    built_image: BuiltImage,
) -> None:
    done = run_in_image(built_image)
    assert done.returncode == 2
    assert done.stderr.startswith("platform-tasks: configuration error: ")
    assert "PLATFORM_TASKS_SENTINELS" in done.stderr
    assert "Traceback" not in done.stderr


# -- the image's processes against a real broker -------------------------------------------


@pytest.fixture(scope="module")
def broker_env(
    built_image: BuiltImage, redis_server_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The image's environment plus what the chart adds: a Sentinel topology (one master,
    one replica, one Sentinel) on loopback, metrics under /tmp, media on a volume."""
    run_dir = tmp_path_factory.mktemp("image-broker")
    media = run_dir / "media"
    media.mkdir()
    with SentinelTopology(
        run_dir / "topology", password=secrets.token_urlsafe(12),
        sentinel_password=secrets.token_urlsafe(12), replicas=1, sentinels=1, quorum=1,
        binary=redis_server_binary,
    ) as topology:
        yield {
            **built_image.env,
            **topology.settings_env(),
            "PLATFORM_TASKS_METRICS_DIR": str(built_image.host_path("/tmp/metrics")),
            "PLATFORM_TASKS_METRICS_PORT": str(free_port()),
            "PLATFORM_TASKS_MONITOR_PORT": str(free_port()),
            "PLATFORM_TASKS_MEDIA_ROOT": str(media),
        }


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a SIGTERM handler (its ``SigCgt`` mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def _wait_for_sigterm_handler(process: ManagedProcess, timeout: float = 15.0) -> bool:
    """As PID 1 a process without a SIGTERM handler ignores SIGTERM (the kernel drops signals
    PID 1 does not catch), and Kubernetes kills it only after the grace period."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.alive and process.pid is not None:
        if _catches_sigterm(process.pid):
            return True
        time.sleep(0.2)
    return False


def _wait_for_first_tick(process: ManagedProcess, broker: redis.Redis,
                         timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.alive:
        if broker.get(keys.BEAT_LAST_TICK) is not None:
            return
        time.sleep(0.1)


@pytest.mark.integration
def test_the_default_command_runs_a_worker_that_does_an_enqueued_task(
    built_image: BuiltImage, broker_env: dict[str, str], tmp_path: Path
) -> None:
    # Given the image's default command (worker --queue default) running,
    before = built_image.files()
    worker = ManagedProcess(
        "image-worker", built_image.argv(), broker_env, tmp_path / "worker.log",
        cwd=built_image.workdir,
    )
    worker.start()
    try:
        # when a task is enqueued through the image's own CLI and waited for,
        done = run_in_image(
            built_image, "enqueue", "platform_tasks.default.add_numbers", "--queue",
            "default", "--args", "[20, 22]", "--wait", "45", env=broker_env, timeout=60,
        )
        handles_sigterm = _wait_for_sigterm_handler(worker)
    finally:
        # (SIGTERM, as Kubernetes stops a pod: a warm shutdown that exits cleanly)
        status = worker.stop(timeout=30)
    log = (tmp_path / "worker.log").read_text()

    # then the worker ran it, and stopped cleanly when asked, writing only under /tmp.
    assert done.returncode == 0, f"{done.stderr}\n--- worker log:\n{log[-3000:]}"
    task_id, outcome = done.stdout.strip().splitlines()
    status_line = json.loads(outcome)
    assert (status_line["task_id"], status_line["state"], status_line["result"]) == (
        task_id, "SUCCESS", 42
    )
    assert handles_sigterm, "the worker would ignore SIGTERM as the container's PID 1"
    assert status == 0, f"worker exited {status}:\n{log[-3000:]}"
    assert built_image.files() == before, "the worker wrote outside /tmp"


@pytest.mark.integration
@pytest.mark.parametrize("role", ["beat", "monitor"])
def test_the_other_roles_run_and_stop_on_sigterm_as_pid_1(
    built_image: BuiltImage, broker_env: dict[str, str], tmp_path: Path, role: str
) -> None:
    before = built_image.files()
    broker = connect(load_settings(broker_env))
    broker.delete(keys.BEAT_LAST_TICK)
    process = ManagedProcess(
        f"image-{role}", built_image.argv(role), broker_env, tmp_path / f"{role}.log",
        cwd=built_image.workdir,
    )
    process.start()
    try:
        handles_sigterm = _wait_for_sigterm_handler(process)
        if role == "beat":
            # Signalled before its scheduler is built, beat builds it again inside the signal
            # handler, mid-import, and exits 1: what is tested is a beat that runs.
            _wait_for_first_tick(process, broker)
        alive = process.alive
    finally:
        status = process.stop(timeout=15)
        broker.close()
    log = (tmp_path / f"{role}.log").read_text()
    assert alive, f"{role} exited {status}:\n{log[-3000:]}"
    assert handles_sigterm, (
        f"{role} installs no SIGTERM handler: as the container's PID 1 it would ignore the "
        "SIGTERM of a pod deletion and be killed only after the grace period"
    )
    assert status == 0, f"{role} exited {status} on SIGTERM:\n{log[-3000:]}"
    assert built_image.files() == before, f"{role} wrote outside /tmp"
