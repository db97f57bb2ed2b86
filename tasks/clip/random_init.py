"""`random:<config>`: a seeded, randomly initialised CLIP through the same builder as training.

Meaningless scores, but every stage's model code path runs without a trained teacher (tests,
smoke runs). The config is an architecture name (tasks/clip/configs or open_clip's own) or a
path to an architecture JSON.
"""

from __future__ import annotations

from typing import Any

from tasks.clip.errors import ModelLoadError, UnknownModelError

RANDOM_PREFIX = "random:"


def is_random_ref(ref: str) -> bool:
    """True for `random:<config>` references."""
    return ref.startswith(RANDOM_PREFIX)


def architecture(spec: str) -> str:
    """The architecture name a `random:` spec builds (a JSON path is registered under its stem)."""
    from pathlib import Path

    from tasks.clip.zoo import register_config_file
    from tasks.io.paths import resolve_path

    if Path(spec).suffix == ".json":
        path = resolve_path(spec)
        if not path.is_file():
            raise ModelLoadError(f"{RANDOM_PREFIX}{spec}: config file {path} does not exist")
        return register_config_file(path)
    return spec


def build_random(ref: str, seed: int = 0) -> tuple[Any, Any, Any]:
    """(model in eval mode, eval transform, tokenizer) for `random:<config>`; the same seed gives
    the same weights, and the caller's torch RNG is left as it was."""
    import torch

    from tasks.clip.zoo import build_model

    spec = ref.removeprefix(RANDOM_PREFIX)
    if not spec:
        raise ModelLoadError(f"{ref!r}: name an architecture, e.g. random:clipmill-tiny")
    name = architecture(spec)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            built = build_model(name)
    except UnknownModelError as exc:
        raise UnknownModelError(f"{ref!r}: {exc}") from None
    return built.model.eval(), built.preprocess_val, built.tokenizer
