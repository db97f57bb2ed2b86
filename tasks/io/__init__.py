"""The shared I/O layer every stage uses: atomic writes and completion markers (`atomic`),
webdataset shards (`wds`), crawl shards in any of the crawl's layouts (`crawlshards`),
CLIP_benchmark eval sets (`clipbench`), params paths (`paths`), and
the runner's mapping of `data/` to a bucket (`dataroot`: CLIPMILL_DATA_ROOT=s3://...).

Library code: imports no stage package. The atomic helpers are re-exported here, so
`from tasks.io import atomic_write_json` keeps working.
"""

from tasks.io.atomic import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    done_marker,
    is_done,
    mark_done,
    put_atomic,
    sweep_temp,
)

__all__ = [
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "done_marker",
    "is_done",
    "mark_done",
    "put_atomic",
    "sweep_temp",
]
