"""What evaluate keeps about a model: its short label in results, next to what `load_clip` built.

Loading itself is `tasks.clip.load_clip` (a folder, `models:/name/version` or any reference the
library takes); Ray actors call `load_model` themselves, so only the reference travels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_MLFLOW = re.compile(r"^models:/(?P<name>[^/]+)/(?P<version>[^/]+)$")


@dataclass
class LoadedModel:
    """What every evaluation needs from a model, plus how to name it in results."""

    name: str  # short name used in results (folder name or name-vN)
    ref: str  # the reference as given in params
    arch: str  # open_clip architecture name (CLIP_benchmark's "model" field)
    model: Any
    preprocess: Any
    tokenizer: Any
    model_cfg: dict[str, Any] = field(default_factory=dict)  # open_clip config (tokenizer settings)


def model_label(ref: str) -> str:
    """`data/models/train` -> `train`; `models:/clip/3` -> `clip-v3`."""
    m = _MLFLOW.match(ref)
    if m:
        return f"{m['name']}-v{m['version']}"
    return Path(ref.rstrip("/")).name or ref


def load_model(ref: str) -> LoadedModel:
    """The model in eval mode on the CPU with its labels; tasks.clip.ModelLoadError names `ref`."""
    from tasks.clip import architecture_of, load_clip
    from tasks.clip.load import model_config_of

    model, preprocess, tokenizer = load_clip(ref)
    return LoadedModel(
        model_label(ref),
        ref,
        architecture_of(ref),
        model,
        preprocess,
        tokenizer,
        model_config_of(ref),
    )
