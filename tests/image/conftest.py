"""Fixtures of the image tests: the Dockerfile's stages, and the image its builder stage makes."""

from __future__ import annotations

import pytest
from dockerfile_replay import DOCKERFILE, BuiltImage, Stage, build_image, parse_dockerfile


@pytest.fixture(scope="session")
def dockerfile_stages() -> list[Stage]:
    """The stages of the project's Dockerfile."""
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="session")
def built_image(
    dockerfile_stages: list[Stage], tmp_path_factory: pytest.TempPathFactory
) -> BuiltImage:
    """The builder stage replayed into a fresh venv, once per test session (~20 s)."""
    return build_image(dockerfile_stages, tmp_path_factory.mktemp("image"))
