"""Train-state checkpoints (exact resume) and the final model folder (docs/CONTRACTS.md).

Nothing here unpickles code: weights are safetensors, optimizer state is read with
`torch.load(weights_only=True)`, metadata is JSON. A checkpoint is complete once its
manifest (sha256 of every file) is written; a manifest that does not match is corruption.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from tasks.io.atomic import atomic_dir

MANIFEST = "manifest.json"
OBJECTIVE_FILE = "objective.safetensors"  # the training objective's state (A-CLIP's EMA model)
PREFIX = "checkpoint_"
HF_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


class CheckpointError(ValueError):
    """A checkpoint or model folder is missing, incomplete or corrupt; the message names it."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_for_saving(model: Any) -> dict[str, Any]:
    """Contiguous, unshared CPU tensors (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def write_train_state(
    directory: Path,
    model: Any,
    optimizer: Any,
    state: dict[str, Any],
    objective_state: dict[str, Any] | None = None,
) -> None:
    """Write weights, optimizer, the objective's state (an EMA copy) and position, then the
    manifest that marks the checkpoint complete."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file(state_dict_for_saving(model), str(directory / "model.safetensors"))
    if objective_state:
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in objective_state.items()}
        save_file(tensors, str(directory / OBJECTIVE_FILE))
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    (directory / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    files = {p.name: _sha256(p) for p in sorted(directory.iterdir()) if p.name != MANIFEST}
    (directory / MANIFEST).write_text(json.dumps(files, indent=2))


def save_local_checkpoint(
    root: Path,
    step: int,
    model: Any,
    optimizer: Any,
    state: dict[str, Any],
    keep: int,
    objective_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp dir then rename) under root and prune old ones."""
    final = root / f"{PREFIX}{step:08d}"
    with atomic_dir(final, prefix=".tmp_ckpt_") as tmp:
        write_train_state(tmp, model, optimizer, state, objective_state)
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify(directory: Path) -> dict[str, Any]:
    """Check the manifest against the files; return state.json. Raises CheckpointError."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"checkpoint {directory}: incomplete (no {MANIFEST})")
    try:
        files = json.loads(manifest.read_text())
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {directory}: corrupt {MANIFEST} ({exc})") from None
    for name, digest in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory}: file {name} is missing")
        if _sha256(path) != digest:
            raise CheckpointError(
                f"checkpoint {directory}: file {name} is corrupt (sha256 mismatch)"
            )
    return json.loads((directory / "state.json").read_text())


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders with a manifest, oldest first (folders without one were cut short)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(f"{PREFIX}*") if p.is_dir() and (p / MANIFEST).is_file())


def load_train_state(
    directory: Path, model: Any, optimizer: Any | None, objective: Any | None = None
) -> dict[str, Any]:
    """Restore weights, optimizer and the objective's state in place from a verified checkpoint;
    returns its state."""
    import torch
    from safetensors.torch import load_file

    state = verify(directory)
    try:
        weights = load_file(str(directory / "model.safetensors"))
        model.load_state_dict(weights, strict=True)
        if optimizer is not None:
            optimizer.load_state_dict(
                torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True)
            )
        if objective is not None:
            extra = directory / OBJECTIVE_FILE
            objective.load_state_dict(load_file(str(extra)) if extra.is_file() else {})
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"checkpoint {directory}: cannot be loaded ({exc})") from None
    return state


def export_model_folder(out_dir: Path, built: Any, params_yaml: str, step: int) -> Path:
    """The stage's product: safetensors + open_clip config + params + an open_clip checkpoint.pt."""
    import torch
    from safetensors.torch import save_file

    from tasks.clip.folder import folder_config

    with atomic_dir(out_dir) as tmp:  # a failed or interrupted write leaves nothing behind
        sd = state_dict_for_saving(built.model)
        save_file(sd, str(tmp / "model.safetensors"))
        # written for open_clip's `local-dir:` too (offline: the HF tower config by the folder's path)
        config = folder_config(
            built.model_name,
            built.model_cfg,
            built.preprocess_cfg,
            out_dir,
            hf_files_in_folder=bool(built.hf_dir),
        )
        (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2, default=list))
        (tmp / "params.yaml").write_text(params_yaml)
        torch.save(
            {"epoch": 1, "step": step, "name": built.model_name, "state_dict": sd},
            tmp / "checkpoint.pt",
        )
        # the HF text tower's config and tokenizer, so the folder loads offline on its own
        if built.hf_dir:
            for name in HF_FILES:
                src = Path(built.hf_dir) / name
                if src.is_file():
                    shutil.copy2(src, tmp / name)
    return out_dir
