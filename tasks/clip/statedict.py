"""A model folder's weights read lazily: safetensors memory-mapped, one tensor at a time.

Merging N checkpoints must not hold N state dicts: `LazyWeights` opens `model.safetensors` with
`safetensors.safe_open` (a memory map; its header gives keys, shapes, dtypes) and hands out one
tensor per `get`, each read through a map of its own, so a method that walks the keys holds only
the tensors it is combining, however many models stay open. `check_compatible` compares architecture,
key sets and shapes before any arithmetic, and every error names the model and the key.
`write_model_folder` writes a merged state dict as a model folder (docs/CONTRACTS.md) built from
a base folder's config, loadable by `load_clip` and by plain open_clip.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tasks.clip.errors import ModelLoadError
from tasks.clip.folder import CONFIG_FILE, WEIGHTS_FILE, folder_config, read_folder_config
from tasks.io.atomic import atomic_dir

HF_FILES = (  # an HF text tower's files a folder carries so it loads offline (tasks/train)
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


_DTYPES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


class StateDictMismatchError(ModelLoadError):
    """Two checkpoints cannot be merged: other architecture, missing or extra keys, other shapes."""


class LazyWeights:
    """The tensors of one model folder, memory-mapped; `get(key)` reads one tensor."""

    def __init__(self, folder: Path, name: str | None = None) -> None:
        from safetensors import safe_open

        self.folder = Path(folder)
        self.name = name or str(folder)
        path = self.folder / WEIGHTS_FILE
        if not path.is_file():
            raise ModelLoadError(f"model {self.name}: weights file {path} is missing")
        try:
            self._file = safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:
            raise ModelLoadError(f"model {self.name}: {path} is not safetensors ({exc})") from None
        self._keys = list(self._file.keys())
        self.config = read_folder_config(self.folder)

    def names(self) -> list[str]:
        """Every key, in file order."""
        return list(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        """The tensor's shape from the file header, without reading its data."""
        self._require(key)
        return tuple(self._file.get_slice(key).get_shape())

    def get(self, key: str) -> Any:
        """One tensor (float32 for floating tensors, so arithmetic is exact enough and uniform).

        Read through a map opened for this read and closed after it: pages read through the
        long-lived header map would stay resident (and count in RSS) for as long as the model is
        open, so a merge that keeps N models open would grow by N checkpoints as it reads them.
        The returned tensor is a copy; the extra header parse costs well under a millisecond."""
        from safetensors import safe_open

        self._require(key)
        with safe_open(str(self.folder / WEIGHTS_FILE), framework="pt", device="cpu") as file:
            tensor = file.get_tensor(key)
        return tensor.float() if tensor.is_floating_point() else tensor

    def dtype(self, key: str) -> Any:
        self._require(key)
        return self._file.get_slice(key).get_dtype()

    def dtype_torch(self, key: str) -> Any:
        """The torch dtype stored in the file for `key` (merged tensors go back to it)."""
        import torch

        return getattr(torch, _DTYPES.get(str(self.dtype(key)), "float32"))

    def _require(self, key: str) -> None:
        if key not in self._keys:
            raise StateDictMismatchError(f"model {self.name}: has no key {key!r}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)


def open_weights(ref: str | Path) -> LazyWeights:
    """A model folder or an MLflow URI (`models:/name/version`, fetched once) -> its lazy weights."""
    from tasks.clip.load import local_folder
    from tasks.clip.mlflow_uri import download_model_folder, is_mlflow_uri

    ref = str(ref)
    if not ref.strip():
        raise ModelLoadError("no model given: a folder or a models:/name/version URI is needed")
    folder = download_model_folder(ref) if is_mlflow_uri(ref) else local_folder(ref)
    if not folder.is_dir():
        raise ModelLoadError(f"model {ref!r}: folder {folder} does not exist")
    return LazyWeights(folder, name=ref)


def check_compatible(base: LazyWeights, other: LazyWeights) -> None:
    """Raise StateDictMismatchError naming `other` and the first offending key, else return."""
    a, b = base.config["model_cfg"], other.config["model_cfg"]
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise StateDictMismatchError(
            f"model {other.name}: architecture differs from base {base.name} (model_cfg keys {diff})"
        )
    missing = [k for k in base.names() if k not in set(other.names())]
    if missing:
        raise StateDictMismatchError(
            f"model {other.name}: missing key {missing[0]!r} (of {len(missing)}) that base "
            f"{base.name} has"
        )
    extra = [k for k in other.names() if k not in set(base.names())]
    if extra:
        raise StateDictMismatchError(
            f"model {other.name}: extra key {extra[0]!r} (of {len(extra)}) that base "
            f"{base.name} lacks"
        )
    for key in base.names():
        if base.shape(key) != other.shape(key):
            raise StateDictMismatchError(
                f"model {other.name}: key {key!r} has shape {list(other.shape(key))}, base "
                f"{base.name} has {list(base.shape(key))}"
            )


def write_model_folder(
    out_dir: Path,
    base: LazyWeights,
    state: Mapping[str, Any],
    params_yaml: str,
    checkpoint_pt: bool = True,
) -> Path:
    """A model folder like the train stage's (safetensors, open_clip config, params, checkpoint.pt)
    with `state`'s tensors cast back to the base's dtypes, written to a temporary folder and
    renamed into place, so a failed run never leaves half a model."""
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:  # a failed or interrupted write leaves nothing behind
        sd = {k: state[k].to(base.dtype_torch(k)).contiguous() for k in base.names()}
        save_file(sd, str(tmp / WEIGHTS_FILE))
        cfg = base.config
        hf_in_folder = (base.folder / "config.json").is_file()
        config = folder_config(
            cfg["model_name"],
            cfg["model_cfg"],
            cfg.get("preprocess_cfg", {}),
            out_dir,
            hf_in_folder,
        )
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=list))
        (tmp / "params.yaml").write_text(params_yaml)
        if checkpoint_pt:
            checkpoint = {"epoch": 1, "step": 0, "name": cfg["model_name"], "state_dict": sd}
            torch.save(checkpoint, tmp / "checkpoint.pt")
        for name in HF_FILES if hf_in_folder else ():
            if (base.folder / name).is_file():
                shutil.copy2(base.folder / name, tmp / name)
    return out_dir
