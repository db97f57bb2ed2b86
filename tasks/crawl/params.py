"""Parameters of the crawl stage (pydantic only, so validating them imports nothing heavy)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from tasks.base import StageParams

Source = Literal["site", "wat", "warc", "urls"]
ResizeMode = Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"]
Encoding = Literal["jpg", "webp", "png"]


class CrawlParams(StageParams):
    """What to crawl, how politely, how to resize and where to write (the WHERE-it-runs is settings)."""

    stage: ClassVar[str] = "crawl"

    # One field, one line, one comment: the contract test reads them this way.
    # fmt: off
    # --- inputs
    sources: list[Source] = ["site", "wat"]  # input modes; their image refs are merged and de-duplicated
    sample_site_dir: str = "data/sample/site"  # served on 127.0.0.1 by the stage when set ("" = serve nothing)
    archives_index: str = "data/sample/archives/index.json"  # lists WAT/WARC files + their base_url ("" = none)
    wat_files: list[str] = []  # extra WAT paths or URLs (fsspec, .gz ok)
    warc_files: list[str] = []  # extra WARC paths or URLs (fsspec, .gz ok)
    url_lists: list[str] = []  # parquet / csv / tsv / jsonl / txt files of image URLs (img2dataset columns)
    url_col: str = "url"  # column holding the image URL in url_lists
    caption_col: str = "caption"  # column holding the text in url_lists ("" = none)
    url_map: dict[str, str] = {}  # canonical URL prefix -> prefix to fetch from (archives -> served site)
    max_images: int = Field(default=0, ge=0)  # images kept after de-duplication, lowest uids first (0 = all)
    # --- site crawl
    seeds: list[str] = []  # start pages; empty = the index of the served sample site
    allowed_hosts: list[str] = []  # hosts the site crawl follows (empty = the seeds' hosts)
    max_depth: int = Field(default=6, ge=0, le=100)  # link hops from a seed
    max_pages: int = Field(default=2000, ge=1)  # pages fetched per site crawl
    politeness_delay_s: float = Field(default=0.0, ge=0.0, le=60.0)  # seconds between two requests to one host (site crawl); robots.txt Crawl-delay wins if larger
    site_concurrency: int = Field(default=4, ge=1, le=256)  # pages fetched at once by the site crawl
    respect_robots_txt: bool = True  # honour robots.txt for pages and images
    # --- downloader
    user_agent: str = "clipmill/0.1 (+https://github.com/clipmill/clipmill; crawler@clipmill.invalid)"  # sent with every request; carries a contact URL
    shard_size: int = Field(default=1000, ge=1, le=1_000_000)  # images per output shard
    shards_in_flight: int = Field(default=2, ge=1, le=4096)  # Ray tasks downloading at once
    connections_per_shard: int = Field(default=32, ge=1, le=4096)  # concurrent requests in one shard task
    connections_per_host: int = Field(default=16, ge=1, le=4096)  # concurrent requests to one host in one shard task
    cpus_per_shard: float = Field(default=1.0, gt=0.0, le=64.0)  # Ray CPUs reserved by a shard task
    decode_threads: int = Field(default=2, ge=1, le=64)  # threads decoding/resizing inside a shard task
    connect_timeout_s: float = Field(default=5.0, gt=0.0, le=600.0)  # seconds to connect
    read_timeout_s: float = Field(default=10.0, gt=0.0, le=600.0)  # seconds between two reads
    total_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)  # seconds for one attempt
    retries: int = Field(default=2, ge=0, le=20)  # extra attempts for transient errors (timeout, reset, 5xx, 429)
    backoff_s: float = Field(default=0.5, ge=0.0, le=60.0)  # first backoff; doubles per retry
    max_retry_after_s: float = Field(default=30.0, ge=0.0, le=3600.0)  # longest Retry-After honoured, seconds
    max_redirects: int = Field(default=5, ge=0, le=50)  # redirect hops per URL
    max_body_bytes: int = Field(default=20_000_000, ge=1)  # bytes; bigger bodies are cut off while streaming
    max_image_pixels: int = Field(default=120_000_000, ge=1)  # width*height above this = decompression bomb
    min_image_size: int = Field(default=0, ge=0)  # px; images whose smaller side is below are refused
    disallowed_header_directives: list[str] = ["noai", "noimageai", "noindex", "noimageindex"]  # X-Robots-Tag values that refuse an image
    allow_addresses: list[str] = []  # IPs / CIDRs allowed although private (the stage's own local server is always allowed)
    # --- resize / encode
    resize_mode: ResizeMode = "border"  # img2dataset's resize modes
    image_size: int = Field(default=256, ge=8, le=8192)  # px target of the resize
    resize_only_if_bigger: bool = False  # never upscale when true
    encode_format: Encoding = "jpg"  # output image encoding
    encode_quality: int = Field(default=95, ge=1, le=100)  # JPEG/WebP quality (PNG: compress level = quality // 10)
    # --- output and resume
    output_dir: str = "data/crawl"  # img2dataset layout root (local path or fsspec URI)
    lancedb_uri: str = ""  # LanceDB holding the `pool` table ("" = settings' lancedb_uri)
    write_pool: bool = True  # upsert every input URL (with its status) into the pool table
    overwrite: bool = False  # delete an output made from different inputs instead of refusing
    retry_failed: bool = False  # re-download only the URLs failed with retry_error_classes, merge into shards
    retry_error_classes: list[str] = ["timeout", "connection_error", "http_5xx", "http_429", "dns_error"]  # error classes retry_failed re-downloads
    progress: bool = True  # show a progress bar (images/s, success rate)
    # fmt: on
