"""Params mistakes pydantic cannot see, found before any work: one line naming the field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tasks.base import ParamsError
from tasks.recaption.params import RecaptionParams


def _local_or_hub(ref: str) -> bool:
    """A path that exists, or something shaped like a hub id (`org/name`, no path prefix)."""
    if Path(ref).exists():
        return True
    looks_local = ref.startswith(("/", ".", "~")) or ref.count("/") > 1
    return not looks_local


def _model_folder(field: str, ref: str | None, needed_by: str) -> None:
    from tasks.io.paths import resolve_path

    if ref is None:
        raise ParamsError(
            f"params/recaption.yaml: field '{field}' = null, but {needed_by} needs it"
        )
    if ref.startswith("random:") or "://" in ref or ref.startswith("models:/"):
        return
    if not resolve_path(ref).is_dir():
        raise ParamsError(
            f"params/recaption.yaml: field '{field}' = {ref!r}: no such model folder "
            f"{resolve_path(ref)} (run the stage that writes it first)"
        )


def _wordnet(p: RecaptionParams, name: str) -> None:
    from tasks.io.paths import resolve_path

    if not resolve_path(p.paths.wordnet).is_file():
        raise ParamsError(
            f"params/recaption.yaml: field 'paths.wordnet' = {p.paths.wordnet!r}: file not found "
            f"(backend {name} needs it; run the sample stage first)"
        )


def _tagger(p: RecaptionParams) -> None:
    _model_folder("paths.teacher", p.paths.teacher, "backend tagger")
    _wordnet(p, "tagger")


def _composer(p: RecaptionParams) -> None:
    _wordnet(p, "composer")


def _hf(p: RecaptionParams) -> None:
    if p.hf.model is None or not _local_or_hub(p.hf.model):
        raise ParamsError(
            f"params/recaption.yaml: field 'hf.model' = {p.hf.model!r}: backend hf needs an "
            "existing model folder or a hub id"
        )
    if p.hf.dtype not in ("float32", "float16", "bfloat16"):
        raise ParamsError(
            f"params/recaption.yaml: field 'hf.dtype' = {p.hf.dtype!r}: use float32, float16 or bfloat16"
        )


def _openai(p: RecaptionParams) -> None:
    url = p.openai.base_url
    if not url or not url.startswith(("http://", "https://")):
        raise ParamsError(
            f"params/recaption.yaml: field 'openai.base_url' = {url!r}: backend openai needs an http(s) URL"
        )


def _coca(p: RecaptionParams) -> None:
    _model_folder("coca.model", p.coca.model, "backend coca (train it: clipmill run coca)")


def _exclude_list(p: RecaptionParams) -> None:
    """The flagged list must be readable: recaptioning without it would caption eval copies."""
    from tasks.io.uidlist import UidListError, read_uid_list

    try:
        read_uid_list(p.select.exclude_uids, "select.exclude_uids")
    except UidListError as exc:
        raise ParamsError(
            f"params/recaption.yaml: field 'select.exclude_uids': {exc} (run the decontaminate "
            "stage first, or set it to null)"
        ) from None


# Backend name -> its check; a backend without one (B's coca adds its own) needs nothing checked.
CHECKS: dict[str, Callable[[RecaptionParams], None]] = {
    "tagger": _tagger,
    "composer": _composer,
    "hf": _hf,
    "openai": _openai,
    "coca": _coca,
}


def preflight(p: RecaptionParams) -> None:
    """Every listed backend's check, then the teacher that scores the captions."""
    for name in p.backends:
        check = CHECKS.get(name)
        if check is not None:
            check(p)
    if p.paths.teacher is not None:
        _model_folder("paths.teacher", p.paths.teacher, "the caption scores")
    _exclude_list(p)
    if p.compute.min_actors > p.compute.max_actors:
        raise ParamsError(
            f"params/recaption.yaml: field 'compute.min_actors' = {p.compute.min_actors}: more "
            f"than compute.max_actors = {p.compute.max_actors}"
        )
