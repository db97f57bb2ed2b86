"""A Ray node without the driver's data cache fetches what it reads from the bucket data root
(tasks/io/nodefetch.py), through fsspec's in-memory filesystem here (the two-node cluster test,
tests/operate/test_ray_cluster.py, runs it against the S3 server on a node with its own disk);
and a file the driver writes for its tasks (curate's metadata) reaches them by value. The other
direction: what a task or Ray Train worker on another node than the driver writes under the
cache folder goes up to the bucket (`publish`), where the driver gets it (`refresh`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from tasks.io.nodefetch import bucket_uri, ensure_local, publish, refresh, this_node
from tasks.io.wds import TarWriter, read_images
from tasks.settings import get_settings

ROOT = "memory://clipmill-nodefetch/data"


@pytest.fixture
def bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A bucket data root holding one shard and one model folder; an empty cache folder."""
    fs = fsspec.filesystem("memory")
    writer = TarWriter()
    writer.add_sample("uid1", {"jpg": b"\xff\xd8 image one", "txt": b"one"})
    fs.pipe(f"{ROOT}/crawl/shards/00000.tar", writer.getvalue())
    fs.pipe(f"{ROOT}/models/teacher/config.json", b"{}")
    fs.pipe(f"{ROOT}/models/teacher/weights.bin", b"w" * 10)
    monkeypatch.setenv("CLIPMILL_DATA_ROOT", ROOT)
    monkeypatch.setenv("CLIPMILL_DATA_CACHE", str(tmp_path / "cache"))
    get_settings.cache_clear()
    yield tmp_path / "cache"
    fs.rm("clipmill-nodefetch", recursive=True)
    get_settings.cache_clear()


def test_a_missing_shard_is_fetched_when_read(bucket: Path) -> None:
    path = bucket / "crawl" / "shards" / "00000.tar"
    assert [(k, d) for k, d, _ in read_images(path)] == [("uid1", b"\xff\xd8 image one")]
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))


def test_a_missing_folder_comes_whole(bucket: Path) -> None:
    folder = bucket / "models" / "teacher"
    ensure_local(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "weights.bin"]
    assert (folder / "weights.bin").read_bytes() == b"w" * 10


def test_a_present_file_is_left_as_it_is(bucket: Path) -> None:
    path = bucket / "crawl" / "shards" / "00000.tar"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"local")
    ensure_local(path)
    assert path.read_bytes() == b"local"


def test_paths_outside_the_cache_or_the_bucket_stay_missing(bucket: Path, tmp_path: Path) -> None:
    """Nothing is invented: the reader then fails naming its own path, as without a data root."""
    outside = tmp_path / "elsewhere" / "crawl" / "shards" / "00000.tar"
    ensure_local(outside)
    assert not outside.exists()
    absent = bucket / "crawl" / "shards" / "00009.tar"
    ensure_local(absent)
    assert not absent.exists() and not absent.parent.exists()
    with pytest.raises(FileNotFoundError, match="00009.tar"):
        list(read_images(absent))


def test_a_local_data_root_fetches_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPMILL_DATA_ROOT", str(tmp_path / "root"))
    get_settings.cache_clear()
    try:
        path = tmp_path / "root" / "crawl" / "x.tar"
        ensure_local(path)
        assert not path.exists()
    finally:
        get_settings.cache_clear()


def test_the_matcher_builds_from_the_driver_bytes_without_the_file(tmp_path: Path) -> None:
    """curate's matcher actors get the metadata file's bytes from the driver: on a node that
    does not share the driver's disk the path is absent, and the automaton is the same."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.curate.matching import MatchBatch, get_matcher

    path = tmp_path / "metadata.parquet"
    pq.write_table(pa.table({"entry": ["red fox", "fox", "logo"]}), path)
    data = path.read_bytes()
    on_driver = get_matcher(path).match("a red fox logo")
    path.unlink()  # the other node's view
    batch = MatchBatch(str(path), 2000, data)
    assert batch.matcher.match("a red fox logo") == on_driver == [0, 1, 2]
    with pytest.raises(FileNotFoundError):
        get_matcher(tmp_path / "other.parquet")  # without the bytes the path is needed


def test_publish_from_another_node_replaces_the_bucket_folder_whole(
    bucket: Path, ray_session: object
) -> None:
    """An output written on a node that is not the driver's goes up, stale objects removed,
    and the driver's `refresh` replaces its own (older) copy with it."""
    fs = fsspec.filesystem("memory")
    folder = bucket / "models" / "teacher"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"new weights")
    assert publish(folder, driver_node="f" * 56)  # a node id that is not this process's node
    remote = f"{ROOT}/models/teacher"
    names = sorted(p.rsplit("/", 1)[1] for p in fs.find(remote))
    assert names == ["model.safetensors"], names  # config.json and weights.bin were stale
    assert fs.cat(f"{remote}/model.safetensors") == b"new weights"
    # the driver's cache held the old folder: refresh brings the bucket's copy
    (folder / "model.safetensors").unlink()
    (folder / "weights.bin").write_bytes(b"old")
    refresh(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]
    assert (folder / "model.safetensors").read_bytes() == b"new weights"


def test_publish_does_nothing_on_the_driver_node_or_outside_the_cache(
    bucket: Path, tmp_path: Path, ray_session: object
) -> None:
    fs = fsspec.filesystem("memory")
    path = bucket / "crawl" / "shards" / "00001.tar"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"tar")
    here = this_node()
    assert here is not None
    assert not publish(path, driver_node=here)  # the driver's runner pushes its own outputs
    assert not publish(path, driver_node=None)  # no cluster
    assert not fs.exists(f"{ROOT}/crawl/shards/00001.tar")
    outside = tmp_path / "elsewhere.txt"
    outside.write_bytes(b"x")
    assert bucket_uri(outside) is None
    assert not publish(outside, driver_node="f" * 56)
    assert bucket_uri(path) == f"{ROOT}/crawl/shards/00001.tar"
    assert publish(path, driver_node="f" * 56)
    assert fs.cat(f"{ROOT}/crawl/shards/00001.tar") == b"tar"
