"""Load the CLIP model named by `clip_model`: a trained folder / MLflow URI, or `random:<config>`.

`random:<name or config.json>` builds a randomly initialised open_clip model (seeded) through the
same embedding code path: meaningless scores, but the whole machinery runs without a teacher
(tests, smoke runs). Everything else goes to tasks.models.load_clip (the train stage's loader).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks import PROJECT_ROOT

CONFIG_DIR = Path(__file__).parent / "configs"


class ModelNotConfiguredError(RuntimeError):
    """A step needs a CLIP model and none is configured or it cannot be loaded."""


def _random_model(spec: str) -> tuple[Any, Any, Any]:
    import open_clip
    import torch

    path = Path(spec)
    if not path.suffix:
        path = CONFIG_DIR / f"{spec}.json"
    if path.exists():
        open_clip.add_model_config(path)
        name = path.stem
    else:
        name = spec
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def load_model(ref: str | None) -> tuple[Any, Any, Any]:
    """(model, preprocess, tokenizer); ModelNotConfiguredError with the reason when impossible."""
    if not ref:
        raise ModelNotConfiguredError(
            "this step needs a CLIP model: set clip_model (a folder, models:/ URI or random:<config>)"
        )
    if ref.startswith("random:"):
        return _random_model(ref.removeprefix("random:"))
    if "://" not in ref and ":/" not in ref:
        path = Path(ref) if Path(ref).is_absolute() else PROJECT_ROOT / ref
        if not path.exists():
            raise ModelNotConfiguredError(
                f"clip_model {ref!r}: {path} does not exist (train the teacher first)"
            )
        ref = str(path)
    try:
        from tasks.models import load_clip
    except ImportError as exc:
        raise ModelNotConfiguredError(
            f"clip_model {ref!r}: tasks.models.load_clip is unavailable ({exc})"
        ) from exc
    model, preprocess, tokenizer = load_clip(ref)
    return model.eval(), preprocess, tokenizer
