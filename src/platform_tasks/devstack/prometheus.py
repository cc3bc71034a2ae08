"""A real Prometheus server on loopback, scraping the local stack and loading the rule files.

The monitoring tests use it to prove that every documented series exists, every dashboard
query returns data and every rule evaluates; ``platform-tasks dev --prometheus`` starts one
for a developer. It needs the ``prometheus`` binary (Debian package ``prometheus``).
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from platform_tasks.devstack.lifecycle import Service
from platform_tasks.devstack.ports import LOOPBACK, free_port
from platform_tasks.devstack.processes import ManagedProcess
from platform_tasks.observability.catalog import MONITOR_JOB, WORKER_JOB

INSTALL_HINT = "install it with `apt-get install prometheus` (Debian package)"


class PrometheusNotFound(FileNotFoundError):  # noqa: N818 - reads as the condition it is
    """No ``prometheus`` binary on PATH."""


class PrometheusError(RuntimeError):
    """Prometheus did not come up, or an API call failed."""


def find_prometheus() -> Path:
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusNotFound(f"no prometheus binary on PATH: {INSTALL_HINT}")
    return Path(found)


def _target(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.netloc, parts.path or "/metrics"


def scrape_config(
    metrics_urls: Mapping[str, str], scrape_interval: float, rule_files: Sequence[Path]
) -> dict[str, Any]:
    """prometheus.yml as data: one job for the workers, one for the monitor.

    ``metrics_urls`` maps a process name (``worker-<queue>``, ``monitor``) to its URL; the
    job names are the ones the chart's scrape objects use.
    """
    jobs: dict[str, list[str]] = {}
    for name, url in metrics_urls.items():
        address, _path = _target(url)
        jobs.setdefault(MONITOR_JOB if name == "monitor" else WORKER_JOB, []).append(address)
    return {
        "global": {
            "scrape_interval": f"{scrape_interval:g}s",
            "evaluation_interval": f"{scrape_interval:g}s",
        },
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": sorted(targets)}]}
            for job, targets in sorted(jobs.items())
        ],
    }


class PrometheusServer(Service):
    """Prometheus with its config and data under ``run_dir``; HTTP API helpers for tests."""

    def __init__(
        self,
        run_dir: Path,
        metrics_urls: Mapping[str, str],
        *,
        rule_files: Sequence[Path] = (),
        scrape_interval: float = 1.0,
        binary: Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.metrics_urls = dict(metrics_urls)
        self.rule_files = [Path(path).resolve() for path in rule_files]
        self.scrape_interval = scrape_interval
        self.binary = binary
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("Prometheus is not started")
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        binary = self.binary or find_prometheus()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config = self.run_dir / "prometheus.yml"
        # JSON is valid YAML: no YAML writer needed.
        config.write_text(json.dumps(
            scrape_config(self.metrics_urls, self.scrape_interval, self.rule_files), indent=2
        ))
        self.port = free_port()
        self.process = ManagedProcess(
            "prometheus",
            [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.run_dir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                "--web.enable-lifecycle",
            ],
            None,
            self.run_dir / "prometheus.log",
            cwd=self.run_dir,
        )
        self.process.start()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.process.alive:
                raise PrometheusError(
                    f"prometheus exited with status {self.process.returncode}; "
                    f"see {self.process.log_path}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:  # noqa: S310 - loopback URL we built
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"prometheus not ready within {self.start_timeout:g}s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(10.0)
            self.process = None

    # -- HTTP API -----------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a successful answer."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as reply:  # noqa: S310 - loopback URL we built
                document = json.loads(reply.read())
        except urllib.error.HTTPError as error:
            document = json.loads(error.read() or b"{}")
        if document.get("status") != "success":
            raise PrometheusError(
                f"{path} {params}: {document.get('errorType')}: {document.get('error')}"
            )
        return document["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (vector or scalar, as Prometheus returns it)."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = (
            data["result"] if data["resultType"] in ("vector", "matrix")
            else [{"value": data["result"]}]
        )
        return result

    def wait_for_targets(self, timeout: float = 60.0) -> None:
        """Wait until every target has been scraped successfully at least once."""
        deadline = time.monotonic() + timeout
        while True:
            targets = self.api("targets")["activeTargets"]
            down = [t["scrapeUrl"] for t in targets if t["health"] != "up"]
            if targets and not down:
                return
            if time.monotonic() >= deadline:
                raise PrometheusError(f"targets not up within {timeout:g}s: {down}")
            time.sleep(0.5)
