"""Common Crawl path lists (`wat.paths.gz`): streamed, joined to the prefix, limited, and read.

The end-to-end case lists the test sample's real WAT file by a relative path and a local mirror
prefix, the way a user samples a Common Crawl release, and extracts its image refs.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.crawl.extract_wat import extract_wat
from tasks.crawl.inputs import InputError, _archive_files
from tasks.crawl.params import CrawlParams
from tasks.crawl.pathlists import PathListError, iter_path_list, join_prefix

from .sitegen import build_sample


def _write_gz(path: Path, text: str) -> Path:
    path.write_bytes(gzip.compress(text.encode()))
    return path


def test_paths_are_joined_streamed_and_limited(tmp_path: Path) -> None:
    listed = _write_gz(
        tmp_path / "wat.paths.gz",
        "# CC-MAIN-2024-10\n"
        "crawl-data/CC-MAIN-2024-10/segments/1/wat/a.warc.wat.gz\n\n"
        "/abs/b.warc.wat.gz\n"
        "s3://other/c.warc.wat.gz\n"
        "crawl-data/CC-MAIN-2024-10/segments/2/wat/d.warc.wat.gz\n",
    )
    prefix = "https://data.commoncrawl.org/"
    assert list(iter_path_list(str(listed), prefix)) == [
        "https://data.commoncrawl.org/crawl-data/CC-MAIN-2024-10/segments/1/wat/a.warc.wat.gz",
        "/abs/b.warc.wat.gz",
        "s3://other/c.warc.wat.gz",
        "https://data.commoncrawl.org/crawl-data/CC-MAIN-2024-10/segments/2/wat/d.warc.wat.gz",
    ]
    assert len(list(iter_path_list(str(listed), prefix, limit=2))) == 2
    assert join_prefix("s3://commoncrawl", "/crawl-data/x") == "/crawl-data/x"
    assert join_prefix("s3://commoncrawl", "crawl-data/x") == "s3://commoncrawl/crawl-data/x"
    plain = tmp_path / "warc.paths"
    plain.write_text("crawl-data/x.warc.gz\n")
    assert list(iter_path_list(str(plain), "s3://commoncrawl/")) == [
        "s3://commoncrawl/crawl-data/x.warc.gz"
    ]


def test_unreadable_or_malformed_lists_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.paths.gz"
    with pytest.raises(PathListError, match="nope.paths.gz"):
        list(iter_path_list(str(missing), ""))
    not_gzip = tmp_path / "fake.paths.gz"
    not_gzip.write_text("crawl-data/a\n")
    with pytest.raises(PathListError, match="fake.paths.gz"):
        list(iter_path_list(str(not_gzip), ""))
    two = tmp_path / "two.paths"
    two.write_text("crawl-data/a crawl-data/b\n")
    with pytest.raises(PathListError, match="two.paths: line 1"):
        list(iter_path_list(str(two), ""))


def test_a_path_list_feeds_the_wat_extraction(tmp_path: Path) -> None:
    root = tmp_path / "sample"
    root.mkdir()
    build_sample(root)
    mirror = root / "archives"  # a local mirror of "the crawl": the prefix, paths relative to it
    listed = _write_gz(tmp_path / "wat.paths.gz", "site.wat.gz\n")
    params = CrawlParams.model_validate(
        {
            "inputs": {
                "sources": ["wat"],
                "archives_index": "",
                "wat_path_lists": [str(listed)],
                "archive_prefix": str(mirror),
            }
        }
    )
    files = _archive_files("wat", params, SimpleNamespace(archives=None))  # type: ignore[arg-type]
    assert files == [str(mirror / "site.wat.gz")]
    extracted = extract_wat(files[0])
    assert extracted.refs, "the WAT file named by the path list yields image refs"
    empty = CrawlParams.model_validate({"inputs": {"sources": ["wat"], "archives_index": ""}})
    with pytest.raises(InputError, match="inputs.wat_path_lists are empty"):
        _archive_files("wat", empty, SimpleNamespace(archives=None))  # type: ignore[arg-type]
