"""The zero-shot prompt templates of the sample stage's classification eval sets.

The sets themselves are written by `tasks.io.clipbench` (CLIP_benchmark's `wds/<name>` layout),
the one writer the tests and benchmarks use too.
"""

from __future__ import annotations

TEMPLATES: dict[str, tuple[str, ...]] = {
    "fashion_mnist": (
        "a photo of a {c}.",
        "a black and white photo of a {c}.",
        "a low resolution photo of a {c}.",
        "a photo of the {c}.",
        "a product photo of a {c}.",
        "a photo of a {c}, a type of clothing.",
    ),
    "emoji": (
        "an emoji of {c}.",
        "a {c} emoji.",
        "an icon of {c}.",
        "a small picture of {c}.",
    ),
    "clipart": (
        "a clip art of {c}.",
        "a drawing of {c}.",
        "a cartoon of {c}.",
        "an illustration of {c}.",
        "a picture from the category {c}.",
    ),
}
