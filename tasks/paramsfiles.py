"""Read one section of another stage's params file, so a stage never re-declares its fields."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError, create_model

from tasks.base import ParamsError, ParamsSection, describe_validation_error, read_yaml_mapping

S = TypeVar("S", bound=ParamsSection)


@cache
def _holder(key: str, model: type[ParamsSection]) -> type[BaseModel]:
    """A one-field model `{key: model}`: validation errors then name the field as `key.field`."""
    return create_model(f"Section_{key}", **{key: (model, ...)})  # type: ignore[call-overload]


def read_section(path: str | Path, key: str, model: type[S]) -> S:
    """The top-level mapping `key` of the YAML file at `path`, validated by `model`.

    Every fault (missing file, malformed YAML, no such section, a bad or unknown field) is one
    ParamsError naming the file and the dotted field, as the stage's own params are reported.
    """
    path = Path(path)
    data = read_yaml_mapping(path)
    if key not in data:
        raise ParamsError(f"{path}: no section {key!r} (expected a mapping of {model.__name__})")
    section = data[key]
    wanted = {key: section}
    try:
        holder = _holder(key, model).model_validate(wanted)
    except ValidationError as exc:
        raise ParamsError(describe_validation_error(str(path), exc, wanted)) from None
    value = getattr(holder, key)
    assert isinstance(value, model)
    return value
