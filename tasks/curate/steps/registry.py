"""Step name -> implementation: a lookup table, so `steps` in params picks code without if/elif."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from tasks.curate.steps.balance import balance
from tasks.curate.steps.base import StepContext, StepResult
from tasks.curate.steps.basic import basic
from tasks.curate.steps.clip_score import clip_score
from tasks.curate.steps.decontam import decontaminate
from tasks.curate.steps.dedup import exact_dedup, perceptual_dedup
from tasks.curate.steps.image_based import image_based
from tasks.curate.steps.semdedup import semantic_dedup
from tasks.curate.steps.text_based import text_based

Step = Callable[[pa.Table, StepContext], StepResult]

STEPS: dict[str, Step] = {
    "basic": basic,
    "exact_dedup": exact_dedup,
    "perceptual_dedup": perceptual_dedup,
    "decontaminate": decontaminate,
    "clip_score": clip_score,
    "text_based": text_based,
    "image_based": image_based,
    "semantic_dedup": semantic_dedup,
    "balance": balance,
}

# Which per-image features each step reads (so the stage computes only what is needed).
NEEDS_HASHES = frozenset({"exact_dedup", "perceptual_dedup", "decontaminate"})
NEEDS_MATCHES = frozenset({"balance"})
