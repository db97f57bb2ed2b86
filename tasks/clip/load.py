"""`load_clip`: the one entry point every stage uses to get a CLIP model from a reference.

A reference is a model folder (relative paths resolve under the project root), an MLflow URI
(`models:/name/version`, `runs:/...`, `mlflow-artifacts:/...`) or `random:<config>`.
Builders, not models, travel to Ray workers: each actor calls `load_clip(ref)` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.clip.errors import ModelLoadError
from tasks.clip.folder import CONFIG_FILE, architecture_name, build_from_folder
from tasks.clip.mlflow_uri import download_model_folder, is_mlflow_uri
from tasks.clip.random_init import build_random, is_random_ref


def local_folder(ref: str | Path) -> Path:
    """The folder a local reference names: absolute as given, relative under the project root."""
    from tasks.io.paths import resolve_path

    return resolve_path(ref)


def load_clip(ref: str | Path | None, device: str = "cpu") -> tuple[Any, Any, Any]:
    """(model in eval mode on `device`, eval image transform, tokenizer) for any model reference."""
    if ref is None or not str(ref).strip():
        raise ModelLoadError(
            "no model given: this needs a CLIP model (a folder, models:/ URI or random:<config>)"
        )
    ref = str(ref)
    if is_random_ref(ref):
        model, preprocess, tokenizer = build_random(ref)
    else:
        if is_mlflow_uri(ref):
            folder = download_model_folder(ref)
        else:
            folder = local_folder(ref)
            if not folder.is_dir():  # a Ray node without the driver's data cache: the bucket's
                from tasks.io.nodefetch import ensure_local

                ensure_local(folder)
            if not folder.is_dir():
                raise ModelLoadError(
                    f"model {ref!r}: folder {folder} does not exist (run the stage that writes it first)"
                )
        model, preprocess, tokenizer = build_from_folder(folder)
    return model.to(device).eval(), preprocess, tokenizer


def architecture_of(ref: str) -> str:
    """The architecture name to report for a reference (CLIP_benchmark's "model" field): the
    folder's recorded model_name, `local-dir:<folder>` if it records none, the URI for MLflow."""
    if is_random_ref(ref):
        return ref
    if is_mlflow_uri(ref):
        return ref
    folder = local_folder(ref)
    if not (folder / CONFIG_FILE).is_file():
        return str(folder)
    return architecture_name(folder) or f"local-dir:{folder}"


def model_config_of(ref: str) -> dict[str, Any]:
    """The open_clip model config a reference builds (hub ids, not local paths): its tokenizer
    settings key stored text features (tasks/clip/locked.py `tokenizer_config`), so curate and
    evaluate look up the same store the teacher wrote."""
    if is_random_ref(ref):
        from tasks.clip.random_init import RANDOM_PREFIX, architecture
        from tasks.clip.zoo import model_config

        return dict(model_config(architecture(ref.removeprefix(RANDOM_PREFIX))))
    from tasks.clip.folder import read_folder_config

    folder = download_model_folder(ref) if is_mlflow_uri(ref) else local_folder(ref)
    return dict(read_folder_config(Path(folder))["model_cfg"])
