"""The container image without a Docker engine: the Dockerfile read, its builder stage replayed.

No Docker engine runs here, so :func:`build_image` does what ``docker build`` would do with the
parts of the Dockerfile that matter: it copies the build context (filtered by
``.dockerignore``) into a directory that stands for the image's root, runs the builder stage's
COPY and exec-form RUN instructions there with absolute paths mapped under that root, and
hands back the runtime stage's environment, working directory and command, so tests run the
image's commands from the venv the Dockerfile built.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

#: What the base image (python:*-slim) itself sets: PATH with /usr/local/bin, and a UTF-8 locale.
BASE_IMAGE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


# -- reading the Dockerfile -----------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY...
    flags: tuple[str, ...]  # --from=builder, --mount=...
    args: str  # the rest of the logical line


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def _logical_lines(text: str) -> Iterator[str]:
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            continue  # comments, also between continued lines (as Docker allows)
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current = (current + line).strip()
        if current:
            yield current
        current = ""
    if current.strip():
        yield current.strip()


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages of a Dockerfile, each with its instructions after FROM."""
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        rest = rest.strip()
        flags: list[str] = []
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        instruction = Instruction(keyword.upper(), tuple(flags), rest)
        if instruction.keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            if instruction.keyword != "ARG":
                raise ValueError(f"{keyword} before the first FROM")
        else:
            stages[-1].instructions.append(instruction)
    return stages


def exec_form(instruction: Instruction) -> list[str]:
    """The argv of an exec-form (JSON) RUN, ENTRYPOINT or CMD; fails on the shell form."""
    try:
        argv = json.loads(instruction.args)
    except json.JSONDecodeError:
        pytest.fail(f"{instruction.keyword} {instruction.args!r} is not in exec (JSON) form")
    assert isinstance(argv, list)
    assert all(isinstance(word, str) for word in argv)
    return argv


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value
    )


def stage_env(stages: list[Stage], index: int) -> dict[str, str]:
    """The environment a stage's processes get: its parent stage's (or the base image's),
    then its own ENV instructions, with ``$VAR`` expanded as Docker does."""
    stage = stages[index]
    parents = [i for i, s in enumerate(stages[:index]) if s.name == stage.base]
    env = stage_env(stages, parents[-1]) if parents else dict(BASE_IMAGE_ENV)
    for instruction in stage.of("ENV"):
        assignments = shlex.split(instruction.args)
        new: dict[str, str] = {}
        for assignment in assignments:
            key, equals, value = assignment.partition("=")
            if not equals:
                raise ValueError(f"ENV {instruction.args!r}: use the KEY=value form")
            new[key] = _expand(value, env)
        env.update(new)
    return env


# -- the build context ------------------------------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    # Docker's matching: `*` and `?` stay within one path segment, `**` crosses segments.
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """``(excludes, pattern)`` per line of a .dockerignore, in order (the last match wins)."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = str(PurePosixPath(line.lstrip("!").strip().lstrip("/")))
        rules.append((not include, _ignore_regex(pattern)))
    return rules


def is_ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves ``relative`` (a path in the context) out of the build context.

    A rule that matches a parent directory matches everything under it, as in Docker.
    """
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for excludes, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            ignored = excludes
    return ignored


def copy_build_context(source: Path, target: Path) -> None:
    """Copy what ``docker build`` would send: ``source`` less what .dockerignore excludes."""
    rules = dockerignore_rules(DOCKERIGNORE.read_text())
    for directory, dirnames, filenames in os.walk(source):
        relative_dir = Path(directory).relative_to(source)
        kept = []
        for name in sorted(dirnames):
            relative = (relative_dir / name).as_posix()
            if not is_ignored(relative, rules):
                kept.append(name)
        dirnames[:] = kept
        for name in filenames:
            relative = (relative_dir / name).as_posix()
            if not is_ignored(relative, rules):
                destination = target / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(directory) / name, destination)


# -- the replayed build -----------------------------------------------------------------------


def _inside(rootfs: Path, path: str) -> Path:
    return rootfs / path.lstrip("/")


def _copy(context: Path, rootfs: Path, workdir: str, instruction: Instruction) -> None:
    *sources, dest = shlex.split(instruction.args)
    dest_path = dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}"
    target = _inside(rootfs, dest_path)
    for source in sources:
        if any(char in source for char in "*?["):
            raise ValueError(f"COPY {source}: the replay does not expand wildcards")
        origin = context / source
        if not origin.exists():
            pytest.fail(f"COPY {source}: not in the build context (.dockerignore?)")
        if origin.is_dir():
            shutil.copytree(origin, target, dirs_exist_ok=True)
        elif dest.endswith("/") or len(sources) > 1:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target / origin.name)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)


@dataclass
class BuiltImage:
    """The image, as far as a test can have it without Docker."""

    stages: list[Stage]
    rootfs: Path  # stands for the image's /
    tmp: Path  # stands for the image's /tmp, the one writable directory
    env: dict[str, str]  # the runtime stage's environment, its paths mapped into rootfs/tmp
    workdir: Path
    entrypoint: list[str]
    cmd: list[str]
    build_log: Path

    @property
    def runtime(self) -> Stage:
        return self.stages[-1]

    def host_path(self, image_path: str) -> Path:
        """Where a path of the image is in this replay."""
        if image_path == "/tmp" or image_path.startswith("/tmp/"):
            return self.tmp / image_path.removeprefix("/tmp").lstrip("/")
        return _inside(self.rootfs, image_path)

    def argv(self, *args: str) -> list[str]:
        """ENTRYPOINT plus ``args``, or plus the CMD when no args are given."""
        return [*self.entrypoint, *(args or self.cmd)]

    def files(self) -> dict[str, tuple[int, int]]:
        """Every file the runtime sees outside /tmp, with its size and mtime: to show that
        running the image writes nothing there (its root filesystem is read-only)."""
        seen: dict[str, tuple[int, int]] = {}
        roots = [self.workdir, *(self.host_path(p) for p in runtime_copied_paths(self.runtime))]
        for root in roots:
            for path in [root, *root.rglob("*")]:
                stat = path.lstat()
                seen[str(path)] = (stat.st_size, stat.st_mtime_ns)
        return seen


def runtime_copied_paths(runtime: Stage) -> list[str]:
    """The destinations the runtime stage copies from other stages."""
    return [shlex.split(i.args)[-1] for i in runtime.of("COPY")]


def _map_env_value(value: str, image: BuiltImage) -> str:
    mapped_roots = ["/tmp", *runtime_copied_paths(image.runtime)]

    def one(item: str) -> str:
        for root in mapped_roots:
            if item == root or item.startswith(root.rstrip("/") + "/"):
                return str(image.host_path(item))
        return item

    return ":".join(one(item) for item in value.split(":"))


def build_image(stages: list[Stage], base: Path) -> BuiltImage:
    """Replay the ``builder`` stage under ``base`` into a fresh venv; the image it makes.

    Every builder RUN must be in exec form; its ``python`` is this interpreter and its
    absolute paths are mapped under the replay's root. pip uses the user's cache (the
    Dockerfile uses a cache mount) and needs PyPI, as ``docker build`` does.
    """
    builder_index = next(i for i, s in enumerate(stages) if s.name == "builder")
    builder = stages[builder_index]
    context, rootfs, tmp = base / "context", base / "rootfs", base / "tmp"
    for directory in (context, rootfs, tmp):
        directory.mkdir()
    copy_build_context(ROOT, context)

    build_env = {**os.environ, **stage_env(stages, builder_index)}
    build_env.pop("PYTHONPATH", None)
    build_log = base / "build.log"
    workdir = "/"
    with build_log.open("w") as log:
        for instruction in builder.instructions:
            if instruction.keyword == "WORKDIR":
                workdir = instruction.args
                _inside(rootfs, workdir).mkdir(parents=True, exist_ok=True)
            elif instruction.keyword == "COPY":
                assert not instruction.flags, "the builder copies from the context only"
                _copy(context, rootfs, workdir, instruction)
            elif instruction.keyword == "RUN":
                argv = exec_form(instruction)
                argv = [
                    sys.executable if word == "python" else
                    str(_inside(rootfs, word)) if word.startswith("/") else word
                    for word in argv
                ]
                log.write(f"--- RUN {argv}\n")
                log.flush()
                done = subprocess.run(
                    argv, cwd=_inside(rootfs, workdir), env=build_env, stdout=log,
                    stderr=subprocess.STDOUT, timeout=300, check=False,
                )
                if done.returncode != 0:
                    pytest.fail(
                        f"builder RUN {instruction.args} exited {done.returncode}:\n"
                        f"{build_log.read_text()[-3000:]}",
                        pytrace=False,
                    )

    runtime = stages[-1]
    entrypoint = exec_form(runtime.of("ENTRYPOINT")[-1])
    cmd = exec_form(runtime.of("CMD")[-1])
    image = BuiltImage(
        stages=stages, rootfs=rootfs, tmp=tmp, env={}, workdir=rootfs,
        entrypoint=entrypoint, cmd=cmd, build_log=build_log,
    )
    image.env = {
        key: _map_env_value(value, image)
        for key, value in stage_env(stages, len(stages) - 1).items()
    }
    image.workdir = image.host_path(runtime.of("WORKDIR")[-1].args)
    image.workdir.mkdir(parents=True, exist_ok=True)
    # ENTRYPOINT's program, found on the image's PATH: it must be the venv's console script.
    program = shutil.which(entrypoint[0], path=image.env["PATH"])
    assert program is not None, f"{entrypoint[0]} is not on the image's PATH"
    image.entrypoint = [program, *entrypoint[1:]]
    return image
