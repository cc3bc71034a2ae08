"""The container image's install steps, kept in one place: the Dockerfile runs them, and
``tests/image/test_dockerfile.py`` runs the very same commands into a fresh venv.

Two steps, so that Docker keeps the dependency layer until ``pyproject.toml`` changes and an
edit to the code rebuilds only the small project layer::

    python scripts/image_install.py dependencies VENV
        Create VENV and install the dependencies ``./pyproject.toml`` lists. Reads nothing
        else, so the Dockerfile runs it before the code is copied.
    python scripts/image_install.py project VENV WHEEL_DIR
        Build the wheel of the project in ``.`` into WHEEL_DIR, install that wheel into VENV
        without dependencies (the first step installed them), then ``pip check`` the venv.

Standard library only: it runs on the base image's Python before anything is installed.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

PIP_OPTIONS = ("--disable-pip-version-check", "--no-input")


def _run(argv: list[str]) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True)


def _pip(venv: Path, *args: str) -> None:
    _run([str(venv / "bin" / "python"), "-m", "pip", *PIP_OPTIONS, *args])


def dependencies(venv: Path) -> None:
    """Create ``venv`` and install the project's runtime dependencies (not the project)."""
    project = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(project.get("dependencies", []))
    _run([sys.executable, "-m", "venv", str(venv)])
    if requirements:
        _pip(venv, "install", *requirements)


def project(venv: Path, wheel_dir: Path) -> Path:
    """Build the project's wheel into ``wheel_dir``, install it into ``venv``; its path."""
    _pip(venv, "wheel", "--no-deps", "--wheel-dir", str(wheel_dir), ".")
    wheels = sorted(wheel_dir.glob("platform_tasks-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one platform_tasks wheel in {wheel_dir}, found {wheels}")
    _pip(venv, "install", "--no-deps", str(wheels[0]))
    # The dependency layer may be older than pyproject.toml's current pins only if the build
    # cache is broken; say so here rather than at the first import in production.
    _pip(venv, "check")
    return wheels[0]


def main(argv: list[str]) -> int:
    match argv:
        case ["dependencies", venv]:
            dependencies(Path(venv))
        case ["project", venv, wheel_dir]:
            project(Path(venv), Path(wheel_dir))
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
