"""Parameters of the `sample` stage: which real data goes where, and how noisy the site is."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from tasks.base import StageParams

Transform = Literal["resize", "crop", "jpeg", "color_shift"]


class SampleParams(StageParams):
    """A sample web (site + WARC/WAT), held-out eval sets and WordNet, built from Debian packages."""

    stage: ClassVar[str] = "sample"

    out_dir: str = "data/sample"  # output folder; relative paths resolve under the project root
    seed: int = Field(default=0, ge=0)  # drives every random choice (splits, noise, planted items)
    base_url: str = Field(
        default="http://sample.clipmill.test/", pattern=r"^https?://[^/]+/$"
    )  # host the archives and fully-qualified links use; the crawler maps it to the served address
    languages: tuple[str, ...] = Field(
        default=("en", "de", "fr", "es", "ja"), min_length=1
    )  # languages of the Tux Paint and emoji pages (first = main); ISO codes as in the sources

    # caps: 0 = everything (tests take a small slice)
    openclipart_max_items: int = Field(default=0, ge=0)  # clip-art SVG files taken (0 = all ~7.5k)
    emoji_max_items: int = Field(default=0, ge=0)  # emoji taken (0 = all ~3.6k)
    emoji_skin_tones: bool = True  # include skin-tone variants (else ~1.9k base emoji)
    tuxpaint_max_items: int = Field(default=0, ge=0)  # Tux Paint stamps taken (0 = all ~950)
    gimp_max_pages: int = Field(default=0, ge=0)  # GIMP manual pages copied (0 = all 685)
    fashion_mnist_max_items: int = Field(
        default=2000, ge=0
    )  # Fashion-MNIST test images, the first N (0 = all 10k)
    fashion_mnist_train_max_items: int = Field(
        default=2000, ge=0
    )  # train images written as the probe's `train` split (seeded, class-balanced; 0 = all 60k)
    suite_train_per_class: int = Field(
        default=20, ge=1
    )  # merging task suite: train images per class of each task (data/sample/suite, never eval data)
    suite_val_per_class: int = Field(
        default=5, ge=1
    )  # merging task suite: held-out `val` images per class (greedy soup's score)

    # held-out evaluation items (never on the site)
    openclipart_eval_fraction: float = Field(default=0.1, ge=0.0, le=0.9)  # share per category
    emoji_eval_fraction: float = Field(default=0.15, ge=0.0, le=0.9)  # share per subgroup
    tuxpaint_eval_fraction: float = Field(default=0.15, ge=0.0, le=0.9)  # share per category
    eval_min_class_items: int = Field(default=4, ge=2)  # smaller classes give nothing to eval
    eval_max_per_class: int = Field(default=60, ge=0)  # held-out items per class (0 = no cap)
    openclipart_skip_classes: tuple[str, ...] = (
        "unsorted",
        "special",
    )  # top folders that are no meaningful class (their items stay on the site)
    retrieval_max_items: int = Field(default=0, ge=0)  # retrieval images (0 = all held out)

    # real-site noise
    items_per_page: int = Field(default=40, ge=1, le=1000)  # gallery items per generated page
    empty_alt_rate: float = Field(default=0.05, ge=0.0, le=1.0)  # share with alt=""
    missing_alt_rate: float = Field(default=0.03, ge=0.0, le=1.0)  # share with no alt attribute
    filename_alt_rate: float = Field(default=0.03, ge=0.0, le=1.0)  # share with file name as alt
    root_relative_rate: float = Field(default=0.2, ge=0.0, le=1.0)  # share of src as "/gallery/.."
    absolute_url_rate: float = Field(default=0.1, ge=0.0, le=1.0)  # share of src as base_url+path
    duplicate_url_rate: float = Field(
        default=0.05, ge=0.0, le=1.0
    )  # share of images also published under /media/<hash> on the "popular" pages
    broken_links: int = Field(default=24, ge=0)  # links to pages and images that do not exist
    disallowed_section: str = Field(
        default="private", pattern=r"^[a-z][a-z0-9_-]*$"
    )  # site folder that robots.txt disallows
    private_items: int = Field(default=40, ge=0)  # gallery items (copies) shown in that section

    # planted near-duplicates of eval images (decontamination ground truth)
    planted_count: int = Field(default=100, ge=0)  # eval images put on the site, transformed
    planted_transforms: tuple[Transform, ...] = Field(
        default=("resize", "crop", "jpeg", "color_shift"), min_length=1
    )  # transformations applied in turn

    # archives
    pages_per_archive: int = Field(default=200, ge=1)  # pages per WARC file (and its WAT)
    warc_date: str = Field(
        default="2024-05-01T00:00:00Z", pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"
    )  # crawl time of the first record; each later page is one second later
    eval_shard_max_items: int = Field(default=10000, ge=1)  # samples per eval tar file
