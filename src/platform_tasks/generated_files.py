"""The check-or-write command every generator of committed files shares.

A generator knows, for a checkout at ``root``, the full text each of its files should have;
this module compares that with what is committed (a test's drift check) or writes it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: ``root`` -> relative path -> the content the file should have.
Generator = Callable[[Path], Mapping[Path, str]]


def drifted(root: Path, generate: Generator) -> list[Path]:
    """The generated files under ``root`` that are missing or differ from the code."""
    stale = []
    for relative, content in generate(root).items():
        path = root / relative
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            stale.append(relative)
    return stale


def write(root: Path, generate: Generator) -> None:
    for relative, content in generate(root).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")


def main(argv: Sequence[str] | None, *, module: str, description: str | None,
         generate: Generator) -> int:
    """``python -m <module> [--write] [--root DIR]``: exit 1 naming each stale file, or write."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--write", action="store_true", help="rewrite the files in place")
    parser.add_argument("--root", type=Path, default=Path.cwd())
    options = parser.parse_args(argv)
    if options.write:
        write(options.root, generate)
        return 0
    stale = drifted(options.root, generate)
    for path in stale:
        print(f"{path} is out of date: run python -m {module} --write")
    return 1 if stale else 0
