"""Common Crawl path lists (`wat.paths.gz`, `warc.paths.gz`): one archive path per line.

Common Crawl publishes, per crawl, a gzipped text file of relative paths
(`crawl-data/CC-MAIN-2024-10/segments/.../wat/....warc.wat.gz`); a user names that file and the
prefix that makes the paths fetchable (`https://data.commoncrawl.org/` over HTTP,
`s3://commoncrawl/` on AWS, or a local mirror). Lines are read as a stream, so a list of 100k
paths never sits in memory twice; `limit` takes the first N, the usual way to sample a crawl.
"""

from __future__ import annotations

from collections.abc import Iterator

from tasks.io.paths import is_uri


class PathListError(ValueError):
    """A path list cannot be read; the message names the file."""


def join_prefix(prefix: str, path: str) -> str:
    """A listed path made fetchable: URIs and absolute paths as they are, others under `prefix`."""
    if is_uri(path) or path.startswith("/") or not prefix:
        return path
    return prefix.rstrip("/") + "/" + path.lstrip("/")


def iter_path_list(uri: str, prefix: str, limit: int = 0) -> Iterator[str]:
    """The archive files one path list names, in its order; blank lines and `#` comments skipped."""
    import fsspec

    compression = "gzip" if uri.lower().endswith(".gz") else None
    count = 0
    try:
        with fsspec.open(uri, "rt", compression=compression, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                path = line.strip()
                if not path or path.startswith("#"):
                    continue
                if any(ch.isspace() for ch in path):
                    raise PathListError(f"{uri}: line {number} is not one path: {path[:200]!r}")
                yield join_prefix(prefix, path)
                count += 1
                if limit and count >= limit:
                    return
    except PathListError:
        raise
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise PathListError(
            f"{uri}: cannot read the path list: {type(exc).__name__}: {exc}"
        ) from None
