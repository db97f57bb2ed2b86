"""Typed, frozen stage parameters and their strict loading from YAML files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ParamsError(ValueError):
    """A params file or override is invalid; the message is one line naming file, field, value."""


class StageError(RuntimeError):
    """A stage refusing its input or its output folder's state (a crawl of other inputs, a
    package that cannot be fetched...): the message says what to do, so the command line
    prints it as one line instead of a traceback."""


class ParamsSection(BaseModel):
    """A nested group of params (e.g. crawl's `resize`): frozen, strict, passed as it is to workers.

    Sections replace copy dataclasses: the object validated from the YAML is the one a Ray worker
    receives, so a field can neither be forgotten in a copy nor drift from what was logged.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class StageParams(BaseModel):
    """Base of every stage's parameters: frozen so a run cannot drift from what was logged."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    stage: ClassVar[str] = ""

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> Self:
        """Load a YAML file, apply dotted overrides on top, validate; ParamsError on any fault."""
        path = Path(path)
        data = read_yaml_mapping(path)
        for key, value in (overrides or {}).items():
            set_dotted(data, key, value)
        return cls.validate_mapping(data, source=str(path))

    @classmethod
    def validate_mapping(cls, data: dict[str, Any], source: str) -> Self:
        try:
            params = cls.model_validate(data)
        except ValidationError as exc:
            raise ParamsError(describe_validation_error(source, exc, data)) from None
        for key, value in escaping_paths(params.model_dump(mode="json")):
            # Here, before any work, for every stage and every path field alike: a stage that
            # checks its inputs first would otherwise report a missing input instead.
            raise ParamsError(
                f"{source}: {key}={value!r}: params path escapes the project folder; write it "
                "inside the project, or as an absolute path / URI to point outside it on purpose"
            )
        return params

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def needs_ray(self) -> bool:
        """Whether this run needs Ray (the registry's `uses_ray` says whether the stage ever does).
        A stage that can run in-process overrides it, and the runner then starts no local Ray: its
        processes would only take CPU time from the run (seconds to boot, then steady polling)."""
        return True


def escaping_paths(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, value) of every relative path in `data` that climbs out of the folder it is
    relative to (`../x`, `data/../../x`), judged lexically, so without knowing the root.

    Why lexically: a relative params path is a promise to stay in the project, whatever the
    project's root; absolute paths and URIs say outright where they go and pass.
    """
    import posixpath

    if isinstance(data, dict):
        return [hit for k, v in data.items() for hit in escaping_paths(v, f"{prefix}{k}.")]
    if isinstance(data, list):
        return [hit for i, v in enumerate(data) for hit in escaping_paths(v, f"{prefix}{i}.")]
    if not isinstance(data, str) or "://" in data or data.startswith("/"):
        return []
    if posixpath.normpath(data).split("/")[0] == "..":
        return [(prefix.rstrip("."), data)]
    return []


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read a params YAML file into a dict, turning every fault into a one-line ParamsError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(
            f"{path}: top level must be a mapping of field: value, got {type(data).__name__}"
        )
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` inside nested dicts, creating intermediate mappings as needed."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value read as YAML (so `3`, `true`, `[a, b]` get their types)."""
    if "=" not in text:
        raise ParamsError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ParamsError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    node = data
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def describe_validation_error(source: str, exc: ValidationError, data: dict[str, Any]) -> str:
    """One line per the contract: file, field, offending value, what was expected."""
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        value = err.get("input", _lookup(data, err["loc"]))
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown field {field!r} (value {value!r})")
        else:
            problems.append(f"field {field!r} = {value!r}: {err['msg']}")
    return f"{source}: " + "; ".join(problems)
