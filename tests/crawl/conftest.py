"""Crawl fixtures: the misbehaving server, a canary listener, a generated sample folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.recording import pytest_runtest_makereport  # noqa: F401 - records test_bounds

from .servers import Canary, ThreadServer, bad_app
from .sitegen import build_sample


@pytest.fixture(scope="session")
def bad_server() -> Iterator[ThreadServer]:
    server = ThreadServer(bad_app)
    yield server
    server.close()


@pytest.fixture()
def canary() -> Iterator[Canary]:
    c = Canary()
    yield c
    c.close()


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    root = tmp_path_factory.mktemp("sample")
    return root, build_sample(root)
