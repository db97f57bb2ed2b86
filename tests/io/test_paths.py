"""The one params-path rule (tasks.io.paths): relative under the settings' root, absolute paths
and URIs as given."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.io.paths import is_uri, resolve_path, resolve_uri


@pytest.fixture()
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project root set through CLIPMILL_ROOT, with the working directory elsewhere."""
    from tasks.settings import get_settings

    project = tmp_path / "project"
    elsewhere = tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    monkeypatch.setenv("CLIPMILL_ROOT", str(project))
    monkeypatch.chdir(elsewhere)
    get_settings.cache_clear()
    yield project
    get_settings.cache_clear()


def test_relative_paths_resolve_under_the_settings_root(root: Path) -> None:
    assert resolve_path("data/curate/shards") == root / "data" / "curate" / "shards"
    assert resolve_path(Path("params/x.yaml")) == root / "params" / "x.yaml"
    assert resolve_uri("data/crawl") == str(root / "data" / "crawl")


def test_absolute_paths_are_kept(root: Path) -> None:
    assert resolve_path("/srv/data/x") == Path("/srv/data/x")
    assert resolve_uri("/srv/data/x") == "/srv/data/x"


@pytest.mark.parametrize("uri", ["s3://bucket/prefix/crawl", "gs://b/k", "file:///tmp/x"])
def test_uris_are_kept_and_never_made_local(root: Path, uri: str) -> None:
    assert is_uri(uri)
    assert resolve_uri(uri) == uri
    with pytest.raises(ValueError, match="must be a local path"):
        resolve_path(uri)


def test_none_passes_through(root: Path) -> None:
    assert resolve_path(None) is None
