"""Bad crawl inputs at the command line: a missing, unreadable or garbage WAT/WARC file, a crawl of
other inputs in the output folder, bad params: each is one line naming the input, no traceback,
a non-zero exit code. A WAT cut mid-gzip is not an error: what was read is kept and counted.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tasks import PROJECT_ROOT
from tasks.cli import main
from tests.crawl.sitegen import build_sample

RELIABILITY_STAGE = (
    "crawl"  # each case recorded in the reliability log (tests/hostile/recording.py)
)
RELIABILITY_DOOR = "cli"


@pytest.fixture()
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_store, ray_session) -> Path:  # type: ignore[no-untyped-def]
    from tasks.settings import get_settings

    monkeypatch.setenv("CLIPMILL_ROOT", str(tmp_path))
    get_settings.cache_clear()
    return tmp_path


def _cli(root: Path, capsys: pytest.CaptureFixture[str], *sets: str) -> tuple[int, str]:
    base = [
        "inputs.archives_index=",
        "inputs.sample_site_dir=",
        f"output.output_dir={root / 'crawl'}",
        f"output.lancedb_uri={root / 'lancedb'}",
        "output.progress=false",
        "http.retries=0",
    ]
    params = str(PROJECT_ROOT / "params/crawl.yaml")
    args = ["run", "crawl", "-p", params] + [a for s in (*base, *sets) for a in ("-s", s)]
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("clipmill: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_missing_and_garbage_archives_are_errors_naming_the_file(root, capsys) -> None:  # type: ignore[no-untyped-def]
    missing = root / "nowhere/crawl.wat.gz"
    code, err = _cli(root, capsys, "inputs.sources=[wat]", f"inputs.wat_files=[{missing}]")
    assert code == 1 and str(missing) in _one_line(err)
    junk = root / "junk.warc.gz"
    junk.write_bytes(b"\x1f\x8b this is no gzip and no warc" * 20)
    code, err = _cli(root, capsys, "inputs.sources=[warc]", f"inputs.warc_files=[{junk}]")
    assert code == 1 and str(junk) in _one_line(err)


def test_unreadable_archive_is_an_error_naming_the_file(root, capsys) -> None:  # type: ignore[no-untyped-def]
    """chmod 000 where permissions bind; as root (who reads any file) a directory in its place,
    which no one can read as a file (tests/hostile/test_hostile_params.py does so for every
    input kind)."""
    unreadable = root / "locked.warc"
    unreadable.write_bytes(b"WARC/1.0\r\n")
    unreadable.chmod(0)
    try:
        with unreadable.open("rb"):
            pass
    except PermissionError:
        pass
    else:  # running as root: permissions do not bind
        unreadable.unlink()
        unreadable.mkdir()
    try:
        code, err = _cli(root, capsys, "inputs.sources=[warc]", f"inputs.warc_files=[{unreadable}]")
        assert code == 1 and str(unreadable) in _one_line(err)
    finally:
        unreadable.chmod(0o755)


def test_truncated_wat_keeps_what_was_read_and_counts_it(root, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    info_root = root / "sample"
    info_root.mkdir()
    build_sample(info_root)
    data = (info_root / "archives/site.wat.gz").read_bytes()
    cut = root / "cut.wat.gz"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    assert gzip.decompress(data)  # the original is whole; the cut one is not
    code, err = _cli(
        root,
        capsys,
        "inputs.sources=[wat]",
        f"inputs.wat_files=[{cut}]",
        f"inputs.sample_site_dir={info_root / 'site'}",
    )
    assert code == 0, err
    metrics = json.loads((root / "metrics/crawl.json").read_text())
    assert metrics["wat_pages"] >= 1 and metrics["successes"] >= 1
    assert (
        metrics.get("input_error_wat_truncated_record", 0)
        + metrics.get("input_error_wat_bad_gzip", 0)
        == 1
    )

    # The same folder asked to hold a crawl of other inputs: one line saying what to do.
    code, err = _cli(
        root,
        capsys,
        "inputs.sources=[wat]",
        f"inputs.wat_files=[{cut}]",
        f"inputs.sample_site_dir={info_root / 'site'}",
        "inputs.max_images=1",
    )
    assert code == 1 and "output.overwrite=true" in _one_line(err)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("bogus.key=1", "bogus"),
        ("policy.allow_everything=true", "allow_everything"),
        ("inputs.shard_size=lots", "inputs.shard_size"),
        ("policy.url_credentials=send", "policy.url_credentials"),
        ("policy.max_url_length=-1", "policy.max_url_length"),
        ("inputs.sources=[gopher]", "inputs.sources"),
    ],
)
def test_bad_params_are_one_line_exit_2(root, capsys, override: str, named: str) -> None:  # type: ignore[no-untyped-def]
    code, err = _cli(root, capsys, override)
    assert code == 2 and named in _one_line(err)


def test_stage_errors_are_one_line_at_the_cli() -> None:
    from tasks.base import StageError
    from tasks.crawl.plan import PlanMismatchError
    from tasks.sample.debian import DebianError

    assert issubclass(PlanMismatchError, StageError) and issubclass(DebianError, StageError)


def test_relative_paths_escaping_the_project_are_refused(root, capsys) -> None:  # type: ignore[no-untyped-def]
    code, err = _cli(root, capsys, "output.output_dir=../../../../tmp/escaped-crawl")
    assert code == 2 and "escapes the project folder" in _one_line(err)  # a params error
    assert not Path("/tmp/escaped-crawl").exists()
    from tasks.io.paths import resolve_uri

    assert resolve_uri("data/../data/crawl") == str(root / "data/../data/crawl")  # stays inside
    assert resolve_uri("/abs/elsewhere") == "/abs/elsewhere"  # absolute: an explicit choice
