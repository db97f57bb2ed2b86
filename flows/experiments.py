"""Overridden pipeline runs as DVC experiments, leaving the committed params files as they were.

`dvc exp run -S params/<stage>.yaml:key=value` writes the values into the params files, runs the
stages in the workspace, and saves the result (params, dvc.lock, metrics) as an experiment that
`dvc exp show` lists and `dvc exp apply` brings back. DVC leaves the changed params files in the
workspace afterwards; `params_kept_intact` puts back their exact bytes (comments included), so an
override never becomes the committed value by accident. DVC passes the experiment's name to the
stage commands (DVC_EXP_NAME), and tasks.tracking tags each stage's MLflow run with it.

`-S` values are read with Hydra's override grammar, not YAML: `hydra_value` writes each validated
value in that grammar, and `check_roundtrip` applies the overrides to a copy of the params file
with DVC's own code and validates the result, so what DVC will write is what was validated.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.base import ParamsError, StageParams, read_yaml_mapping
from tasks.io import atomic_write_bytes
from tasks.tracking import DVC_EXP_TAGS

EXPERIMENT_TAG = DVC_EXP_TAGS["DVC_EXP_NAME"]  # MLflow tag: the DVC experiment of a run
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_BACKSLASHES_BEFORE_QUOTE_OR_END = re.compile(r"(\\+)(?='|$)")


def hydra_value(value: Any) -> str:
    """A params value in Hydra's override grammar (what `dvc exp run -S key=VALUE` reads)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ParamsError(f"value {value!r} cannot be passed to `dvc exp run -S`")
        return repr(value)
    if isinstance(value, str):
        # Quoted: only quotes and the backslashes right before a quote (or the end) are escaped;
        # `${` would start an OmegaConf interpolation.
        body = _BACKSLASHES_BEFORE_QUOTE_OR_END.sub(lambda m: m.group(1) * 2, value)
        return "'" + body.replace("'", "\\'").replace("${", "\\${") + "'"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {hydra_value(v)}" for k, v in value.items()) + "}"
    raise ParamsError(f"value {value!r} ({type(value).__name__}) cannot be passed to dvc exp run")


def set_param_args(params_file: str, overrides: Mapping[str, Any]) -> list[str]:
    """`-S params/x.yaml:key=value` pairs (dotted keys reach into sections)."""
    args: list[str] = []
    for key, value in overrides.items():
        args += ["-S", f"{params_file}:{key}={hydra_value(value)}"]
    return args


def check_roundtrip(
    model: type[StageParams], params_file: Path, overrides: Mapping[str, Any], expected: StageParams
) -> None:
    """Apply the overrides to a copy of the file as `dvc exp run -S` will, and validate it.

    Raises ParamsError when the result is not the validated params (a value Hydra reads
    differently, a section merged rather than replaced), before any stage runs.
    """
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory(prefix="clipmill-exp-") as tmp:
        copy = Path(tmp) / params_file.name
        shutil.copyfile(params_file, copy)
        try:
            apply_overrides(copy, [f"{k}={hydra_value(v)}" for k, v in overrides.items()])
        except Exception as exc:  # DVC's InvalidArgumentError and Hydra's parse errors
            reason = exc.__cause__ or exc  # DVC wraps Hydra's message
            raise ParamsError(
                f"{params_file}: overrides {dict(overrides)} rejected by DVC: {reason}"
            ) from None
        written = model.validate_mapping(read_yaml_mapping(copy), source=f"{params_file} (dvc -S)")
    if written != expected:
        raise ParamsError(
            f"{params_file}: `dvc exp run -S` would write {written.model_dump(mode='json')} "
            f"for overrides {dict(overrides)}, not the validated values; set leaf keys instead"
        )


def experiment_name(requested: str | None) -> str:
    """The experiment's name: the one asked for (a valid git ref part) or clipmill-<time>."""
    if requested is None:
        return time.strftime("clipmill-%Y%m%d-%H%M%S")
    if not _NAME.match(requested) or ".." in requested or requested.endswith((".", ".lock")):
        raise ParamsError(
            f"experiment name {requested!r}: use letters, digits, '.', '_' and '-' (a git ref name)"
        )
    return requested


def require_git_commit(root: Path) -> None:
    """`dvc exp run` saves experiments against HEAD: refuse early, with the fix, when there is none."""
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise ParamsError(
            f"overrides run as DVC experiments, which need a git repository with a commit at "
            f"{root}: commit first, or edit the params files and run without overrides"
        )


def git_identity_env(root: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Author/committer variables for the experiment commit when git has no identity configured
    (a fresh CI machine); empty when one is set, so a person's own identity is used."""
    proc = subprocess.run(
        ["git", "config", "user.email"],
        cwd=root,
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
    )
    if proc.stdout.strip():
        return {}
    who = {"NAME": "clipmill", "EMAIL": "clipmill@localhost"}
    return {f"GIT_{role}_{k}": v for role in ("AUTHOR", "COMMITTER") for k, v in who.items()}


@contextmanager
def params_kept_intact(folder: Path) -> Iterator[None]:
    """Put back the exact bytes of every params file after the block, whatever happened in it."""
    saved = {path: path.read_bytes() for path in sorted(folder.glob("*.yaml"))}
    try:
        yield
    finally:
        for path, data in saved.items():
            if not path.exists() or path.read_bytes() != data:
                atomic_write_bytes(path, data)


def run_dvc_experiment(
    root: Path,
    stages: list[str],
    set_params: list[str],
    name: str,
    env: Mapping[str, str],
    force: bool = False,
    dvc: str = "dvc",
) -> int:
    """`dvc exp run` of `stages` (in the order given, each a single item) as experiment `name`,
    in the workspace, with the params files put back as they were; returns DVC's exit code."""
    cmd = [dvc, "exp", "run", "--name", name, "--single-item", *set_params]
    cmd += (["--force"] if force else []) + stages
    with params_kept_intact(root / "params"):
        # The stages' own progress bars and logs go straight to the console, as they happen.
        proc = subprocess.run(cmd, cwd=root, env={**env, **git_identity_env(root, env)})
    return proc.returncode
