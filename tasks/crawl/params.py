"""Parameters of the crawl stage (pydantic only, so validating them imports nothing heavy).

The params are sections, frozen pydantic models that travel as they are to the Ray shard tasks:
no copy of a field is made anywhere. `resize` is the imaging library's own `ResizeParams`,
which curate reads from this file too (one declaration, two readers).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from tasks.base import ParamsSection, StageParams
from tasks.imaging.resize import ResizeParams

Source = Literal["site", "wat", "warc", "urls"]


class InputParams(ParamsSection):
    """What to download and how it is cut into shards: the saved plan depends on all of it."""

    # One field, one line, one comment: the contract test reads them this way.
    # fmt: off
    sources: list[Source] = ["site", "wat"]  # input modes; their image refs are merged and de-duplicated
    sample_site_dir: str = "data/sample/site"  # served on 127.0.0.1 by the stage when set ("" = serve nothing)
    archives_index: str = "data/sample/archives/index.json"  # lists WAT/WARC files + their base_url ("" = none)
    wat_files: list[str] = []  # extra WAT paths or URLs (fsspec, .gz ok)
    warc_files: list[str] = []  # extra WARC paths or URLs (fsspec, .gz ok)
    wat_path_lists: list[str] = []  # Common Crawl wat.paths(.gz) style files: one WAT path per line, joined to archive_prefix
    warc_path_lists: list[str] = []  # the same for WARC files (warc.paths.gz)
    archive_prefix: str = "https://data.commoncrawl.org/"  # prefix of relative paths in the path lists (s3://commoncrawl/ on AWS, or a local mirror)
    max_archive_files: int = Field(default=0, ge=0)  # first N files of each path list (0 = all): a sample of a crawl
    url_lists: list[str] = []  # txt / csv / tsv / json / jsonl / parquet files of image URLs, .gz ok (img2dataset columns), read in chunks
    url_col: str = "url"  # column holding the image URL in url_lists
    caption_col: str = "caption"  # column holding the text in url_lists ("" = none)
    save_additional_columns: list[str] = []  # url_lists columns carried to the outputs as the JSON `extra` (img2dataset's save_additional_columns)
    url_map: dict[str, str] = {}  # canonical URL prefix -> prefix to fetch from (archives -> served site)
    max_images: int = Field(default=0, ge=0)  # images kept after de-duplication, lowest uids first (0 = all)
    shard_size: int = Field(default=1000, ge=1, le=1_000_000)  # images per output shard
    plan_partitions: int = Field(default=16, ge=1, le=4096)  # uid-range partitions the plan is de-duplicated in: one Ray task each, holding about refs / plan_partitions rows
    # fmt: on


class SiteParams(ParamsSection):
    """The site crawl from seed pages (sources: site)."""

    # fmt: off
    seeds: list[str] = []  # start pages; empty = the index of the served sample site
    allowed_hosts: list[str] = []  # hosts the site crawl follows (empty = the seeds' hosts)
    max_depth: int = Field(default=6, ge=0, le=100)  # link hops from a seed
    max_pages: int = Field(default=2000, ge=1)  # pages fetched per site crawl
    politeness_delay_s: float = Field(default=0.0, ge=0.0, le=60.0)  # seconds between two requests to one host; robots.txt Crawl-delay wins if larger
    concurrency: int = Field(default=16, ge=1, le=256)  # pages of one depth level fetched at once; handled in link order, so the result does not depend on it
    # fmt: on


class PolicyParams(ParamsSection):
    """What the crawl may fetch and keep: site owners' wishes and the address allow-list."""

    # fmt: off
    respect_robots_txt: bool = True  # honour robots.txt for pages and images
    disallowed_header_directives: list[str] = ["noai", "noimageai", "noindex", "noimageindex"]  # X-Robots-Tag values that refuse an image (any case)
    allow_addresses: list[str] = []  # IPs / CIDRs allowed although private, or exact origins http://host:port (the stage's own server is allowed by its origin)
    url_credentials: Literal["strip", "refuse"] = "strip"  # user:password@ in a URL: removed before fetching and storing, or the URL refused
    max_url_length: int = Field(default=4096, ge=16, le=1_000_000)  # characters; longer URLs are refused before fetching
    # fmt: on


class HttpParams(ParamsSection):
    """How every request is made: site pages, robots.txt and images alike."""

    # fmt: off
    user_agent: str = "clipmill/0.1 (+https://github.com/clipmill/clipmill; crawler@clipmill.invalid)"  # sent with every request; carries a contact URL
    connections_per_host: int = Field(default=16, ge=1, le=4096)  # concurrent requests to one host in one shard task or site crawl
    connect_timeout_s: float = Field(default=5.0, gt=0.0, le=600.0)  # seconds to connect
    read_timeout_s: float = Field(default=10.0, gt=0.0, le=600.0)  # seconds between two reads
    total_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)  # seconds for one attempt
    retries: int = Field(default=2, ge=0, le=20)  # extra attempts for transient errors (timeout, reset, 5xx, 429)
    backoff_s: float = Field(default=0.5, ge=0.0, le=60.0)  # first backoff; doubles per retry
    max_retry_after_s: float = Field(default=30.0, ge=0.0, le=3600.0)  # longest Retry-After honoured, seconds
    max_redirects: int = Field(default=5, ge=0, le=50)  # redirect hops per URL
    max_body_bytes: int = Field(default=20_000_000, ge=1)  # bytes; bigger bodies are cut off while streaming
    max_requests_per_second_per_host: float = Field(default=0.0, ge=0.0, le=100_000.0)  # image requests (retries and redirects included) per second to one host, whole crawl (0 = unlimited)
    # fmt: on


class DownloadParams(ParamsSection):
    """How the image downloads are spread over Ray tasks, connections and threads."""

    # fmt: off
    shards_in_flight: int = Field(default=2, ge=1, le=4096)  # Ray tasks downloading at once
    connections_per_shard: int = Field(default=32, ge=1, le=4096)  # concurrent requests in one shard task
    cpus_per_shard: float = Field(default=1.0, gt=0.0, le=64.0)  # Ray CPUs reserved by a shard task
    decode_threads: int = Field(default=2, ge=1, le=64)  # threads decoding/resizing inside a shard task
    shard_timeout_s: float = Field(default=3600.0, ge=0.0, le=86400.0)  # seconds one shard task may spend downloading; URLs unfinished then are recorded as timeout (0 = no limit)
    max_retries: int = Field(default=3, ge=0, le=100)  # times Ray reruns a shard task whose worker died (killed, node lost, out of memory); 0 = fail naming the shard
    # fmt: on


class OutputParams(ParamsSection):
    """Where results go, and what a run does with an existing output."""

    # fmt: off
    output_dir: str = "data/crawl"  # img2dataset layout root (local path or fsspec URI)
    output_format: Literal["webdataset", "files", "parquet"] = "webdataset"  # img2dataset's layouts: NNNNN.tar, NNNNN/<key>.<ext|txt|json> folders, or image bytes in NNNNN.parquet (teacher, train, recaption read webdataset only)
    lancedb_uri: str = ""  # LanceDB holding the `pool` table ("" = settings' lancedb_uri)
    write_pool: bool = True  # upsert every input URL (with its status) into the pool table
    overwrite: bool = False  # delete an output made from other inputs (inputs, site, policy, resize, output_format differ) instead of refusing
    retry_failed: bool = False  # re-download only the URLs failed with retry_error_classes, merge into shards
    retry_error_classes: list[str] = ["timeout", "connection_error", "http_5xx", "http_429", "dns_error"]  # error classes retry_failed re-downloads
    progress: bool = True  # show a progress bar (images/s, success rate)
    # fmt: on


class CrawlParams(StageParams):
    """What to crawl, how politely, how to resize and where to write (the WHERE-it-runs is settings)."""

    stage: ClassVar[str] = "crawl"

    # fmt: off
    inputs: InputParams = InputParams()  # sources and how they are planned into shards
    site: SiteParams = SiteParams()  # the site crawl from seed pages
    policy: PolicyParams = PolicyParams()  # robots.txt, X-Robots-Tag and the address allow-list
    http: HttpParams = HttpParams()  # user agent, timeouts, retries, size limits of every request
    download: DownloadParams = DownloadParams()  # shard tasks, connections and decode threads
    resize: ResizeParams = ResizeParams()  # decode, resize and encode (also read by curate)
    output: OutputParams = OutputParams()  # output folder, LanceDB pool, overwrite and retry
    # fmt: on

    # The sections a saved plan and its shards are made from. A resumed run must use the same
    # values, otherwise one output would mix two crawls (http / download / output only change
    # how fast or how a run goes, never which images are stored nor how).
    # output.output_format joins them: a shard's files depend on it (one field, not the section).
    PLAN_SECTIONS: ClassVar[tuple[str, ...]] = ("inputs", "site", "policy", "resize")

    def plan_inputs(self) -> dict[str, Any]:
        """The values the resume fingerprint is computed from (PLAN_SECTIONS dumped whole, plus
        output.output_format: a rerun in another layout must not keep the old shards)."""
        out = {name: getattr(self, name).model_dump(mode="json") for name in self.PLAN_SECTIONS}
        out["output_format"] = self.output.output_format
        return out
