"""Generates the reference tables in the docs from the code that defines them.

``python -m platform_tasks.reference --write`` rewrites the marked sections of
``docs/configuration.md``, ``docs/queues.md`` and ``docs/metrics.md``; a test fails when they
drift.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr
from pydantic_core import PydanticUndefined

from platform_tasks import generated_files as generated
from platform_tasks.contracts import TASKS
from platform_tasks.observability.catalog import markdown_table
from platform_tasks.queues import MAX_HOLD_SECONDS, QUEUES
from platform_tasks.settings import ENV_PREFIX, Settings

BEGIN = "<!-- BEGIN GENERATED: {name} -->"
END = "<!-- END GENERATED: {name} -->"


def _default_text(name: str) -> str:
    field = Settings.model_fields[name]
    default = field.default
    if default is PydanticUndefined or default is None:
        return "—"
    if isinstance(default, SecretStr):
        return "(secret)"
    if isinstance(default, tuple):
        return ",".join(f"{h}:{p}" for h, p in default) or "—"
    return f"`{default}`"


def settings_table() -> str:
    """Every ``PLATFORM_TASKS_*`` variable with its default and meaning."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        secret = "secret; " if "password" in name else ""
        rows.append(
            f"| `{ENV_PREFIX}{name.upper()}` | {_default_text(name)} | "
            f"{secret}{field.description or ''} |"
        )
    return "\n".join(rows)


def _confirmation(replicas: int) -> str:
    if not replicas:
        return "the master"
    return f"{replicas} replica{'s' if replicas > 1 else ''} (`WAIT`)"


def queues_table() -> str:
    """Every queue's policy, as the workers run it."""
    rows = [
        "| queue | pool | concurrency | prefetch | acks | soft / hard limit (s) | retries "
        "(backoff) | rate limit | soft shutdown (s) | longest countdown (s) | publish confirmed "
        "by | STARTED recorded |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for policy in QUEUES.values():
        retry = policy.retry
        rows.append(
            f"| `{policy.name}` | {policy.pool} | {policy.concurrency} | "
            f"{policy.prefetch_multiplier} | {'late' if policy.acks_late else 'early'} | "
            f"{policy.soft_time_limit} / {policy.time_limit} | {retry.max_retries} "
            f"({retry.backoff_seconds}s doubling to {retry.backoff_max_seconds}s, jitter) | "
            f"{policy.rate_limit or '—'} | {policy.soft_shutdown_seconds} | "
            f"{policy.max_delay_seconds} | {_confirmation(policy.confirm_replicas)} | "
            f"{'yes' if policy.track_started else 'no'} |"
        )
    rows.append("")
    rows.append(
        f"Longest a worker may hold one message (delay, wait behind prefetched ones, run): "
        f"{MAX_HOLD_SECONDS} s."
    )
    return "\n".join(rows)


def tasks_table() -> str:
    """Every task with its home queue and arguments."""
    rows = ["| task | queue | arguments |", "|---|---|---|"]
    for contract in TASKS.values():
        arguments = ", ".join(contract.arguments.model_fields)
        rows.append(f"| `{contract.name}` | `{contract.queue}` | {arguments} |")
    return "\n".join(rows)


SECTIONS = {
    Path("docs/configuration.md"): {"settings": settings_table},
    Path("docs/metrics.md"): {"metrics": markdown_table},
    Path("docs/queues.md"): {"queues": queues_table, "tasks": tasks_table},
}


def _constant(value: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: value


def render(text: str, sections: dict[str, str]) -> str:
    """``text`` with each marked section replaced by its generated content."""
    for name, content in sections.items():
        pattern = re.compile(
            re.escape(BEGIN.format(name=name)) + r".*?" + re.escape(END.format(name=name)),
            re.DOTALL,
        )
        if not pattern.search(text):
            raise ValueError(f"section {name!r} markers not found")
        replacement = f"{BEGIN.format(name=name)}\n{content}\n{END.format(name=name)}"
        # A plain string replacement would expand backslashes in the generated content.
        text = pattern.sub(_constant(replacement), text)
    return text


def generated_files(root: Path) -> dict[Path, str]:
    """Each doc with its marked sections as the code makes them now."""
    return {
        relative: render(
            (root / relative).read_text(encoding="utf-8"),
            {name: generate() for name, generate in generators.items()},
        )
        for relative, generators in SECTIONS.items()
    }


def drifted(root: Path) -> list[Path]:
    """The generated docs under ``root`` whose content differs from the code."""
    return generated.drifted(root, generated_files)


def main(argv: list[str] | None = None) -> int:
    return generated.main(argv, module="platform_tasks.reference", description=__doc__,
                          generate=generated_files)


if __name__ == "__main__":
    sys.exit(main())
