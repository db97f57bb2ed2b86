"""Hostile params for every stage: an output path escaping the project folder (`../../..`) is
refused as a params error (exit 2) before any work, and a missing or unreadable input (a directory where a
file belongs: the tests run as root, for whom chmod 000 binds nothing) is one error line naming it.

Every stage of the registry is tried, found by walking its params model, so a stage added later
is covered without editing this file.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from tasks.cli import main
from tasks.registry import STAGES, get_stage

RELIABILITY_STAGE = "params"  # recorded by tests/hostile/recording.py: stage taken from the case
RELIABILITY_DOOR = "cli"

OUTPUT_NAMES = ("out_dir", "output_dir", "run_root")  # the fields a stage writes under


def _fields(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, object]]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _fields(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _output_fields() -> list[tuple[str, str]]:
    found = []
    for stage in STAGES:
        params = get_stage(stage).model()()
        found += [
            (stage, key)
            for key, value in _fields(params)
            if key.rsplit(".", 1)[-1] in OUTPUT_NAMES and isinstance(value, str)
        ]
    return found


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project root holding only the committed params files."""
    import shutil

    from tasks import PROJECT_ROOT
    from tasks.settings import get_settings

    shutil.copytree(PROJECT_ROOT / "params", tmp_path / "params")
    monkeypatch.setenv("CLIPMILL_ROOT", str(tmp_path))
    get_settings.cache_clear()
    return tmp_path


@pytest.fixture()
def root(project: Path, mlflow_store, ray_session) -> Path:  # type: ignore[no-untyped-def]
    """The same, for runs that get past the params: an MLflow store and the session's Ray."""
    return project


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("clipmill: error")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_every_stage_has_an_output_field_to_try() -> None:
    stages = {stage for stage, _ in _output_fields()}
    assert {"sample", "crawl", "curate", "train", "evaluate", "merge"} <= stages


@pytest.mark.parametrize(("stage", "key"), _output_fields())
def test_output_path_escaping_the_project_is_refused(
    project: Path, capsys: pytest.CaptureFixture[str], stage: str, key: str
) -> None:
    target = Path("/tmp") / f"clipmill-escape-{uuid.uuid4().hex[:8]}"
    depth = "../" * (len(project.resolve().parts) + 2)  # far enough to leave any root
    value = f"{depth}{str(target).lstrip('/')}/out"
    code = main(["run", stage, "-s", f"{key}={value}"])
    line = _error(capsys)
    assert code == 2 and "escapes the project folder" in line and value in line, line
    assert not target.exists()


def test_missing_url_list_is_an_error_naming_it(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = root / "nowhere/urls.parquet"
    code = main(_crawl_args(root, "inputs.sources=[urls]", f"inputs.url_lists=[{missing}]"))
    line = _error(capsys)
    assert code == 1 and str(missing) in line, line


@pytest.mark.parametrize("kind", ["url_lists", "warc_files", "wat_files"])
def test_unreadable_input_file_is_an_error_naming_it(
    root: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """A directory stands where the file should be: unreadable as a file even for root."""
    source = {"url_lists": "urls", "warc_files": "warc", "wat_files": "wat"}[kind]
    suffix = {"url_lists": ".parquet", "warc_files": ".warc.gz", "wat_files": ".wat.gz"}[kind]
    blocker = root / f"blocked{suffix}"
    blocker.mkdir()
    code = main(_crawl_args(root, f"inputs.sources=[{source}]", f"inputs.{kind}=[{blocker}]"))
    line = _error(capsys)
    assert code == 1 and str(blocker) in line, line


def test_garbage_url_list_is_an_error_naming_it(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = root / "junk.parquet"
    junk.write_bytes(b"PAR1 this is no parquet file at all")
    code = main(_crawl_args(root, "inputs.sources=[urls]", f"inputs.url_lists=[{junk}]"))
    line = _error(capsys)
    assert code == 1 and str(junk) in line, line


def _crawl_args(root: Path, *sets: str) -> list[str]:
    base = [
        "inputs.archives_index=",
        "inputs.sample_site_dir=",
        f"output.output_dir={root / 'crawl'}",
        f"output.lancedb_uri={root / 'lancedb'}",
        "output.progress=false",
    ]
    return ["run", "crawl"] + [a for s in (*base, *sets) for a in ("-s", s)]


# Stages that fetch or build their inputs themselves rather than read them: sample downloads
# Debian packages (its missing-package error is tests/sample's).
NO_INPUT_STAGES = frozenset({"sample"})


@pytest.mark.slow  # ~20 s a stage (an MLflow run each): 5 minutes for all of them
@pytest.mark.parametrize("stage", [s for s in STAGES if s not in NO_INPUT_STAGES])
def test_missing_inputs_are_an_error_naming_the_file(
    root: Path, capsys: pytest.CaptureFixture[str], stage: str
) -> None:
    """Every stage run in an empty project (nothing upstream ran): one error line naming the
    missing input's path, exit 1 (or 2 where a params check finds it first), never a warning
    and a success, never a traceback."""
    code = main(["run", stage])
    line = _error(capsys)
    assert code in (1, 2) and str(root) in line, line
    said = ("missing", "no such", "not found", "does not exist", "first", "no ")
    assert any(word in line.lower() for word in said), line
