"""Reading one section of another stage's params file: validated, faults named by file and field."""

from __future__ import annotations

import pytest

from tasks.base import ParamsError
from tasks.imaging.resize import ResizeParams
from tasks.paramsfiles import read_section


def test_reads_and_validates_one_section(tmp_path):
    path = tmp_path / "crawl.yaml"
    path.write_text(
        "shard_size: 10  # not read\nresize:\n  image_size: 128\n  encode_format: png\n"
    )
    got = read_section(path, "resize", ResizeParams)
    assert isinstance(got, ResizeParams)
    assert got.image_size == 128 and got.encode_format == "png" and got.resize_mode == "border"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("shard_size: 10\n", r"crawl\.yaml: no section 'resize'"),
        ("resize:\n  image_size: 2\n", r"crawl\.yaml: field 'resize\.image_size' = 2"),
        ("resize:\n  imagesize: 64\n", r"crawl\.yaml: unknown field 'resize\.imagesize'"),
        ("resize: [1, 2]\n", r"crawl\.yaml: field 'resize'"),
        ("resize: {image_size: 64\n", r"crawl\.yaml: malformed YAML"),
    ],
)
def test_faults_name_the_file_and_the_field(tmp_path, text, message):
    path = tmp_path / "crawl.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=message):
        read_section(path, "resize", ResizeParams)


def test_missing_file_is_a_params_error(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        read_section(tmp_path / "nope.yaml", "resize", ResizeParams)


def test_curate_reads_the_crawl_resize_of_the_settings_root(tmp_path, monkeypatch):
    """Curate's decontamination view takes crawl's `resize` section from <root>/params/crawl.yaml."""
    from tasks.decontam.views import crawl_resize
    from tasks.settings import get_settings

    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "crawl.yaml").write_text("resize:\n  image_size: 64\n")
    monkeypatch.setenv("CLIPMILL_ROOT", str(tmp_path))
    get_settings.cache_clear()
    try:
        assert crawl_resize().image_size == 64
    finally:
        monkeypatch.delenv("CLIPMILL_ROOT")
        get_settings.cache_clear()


def test_read_section_reads_the_whole_match_section(tmp_path):
    """Curate reads decontaminate's whole `match` section (its `eval_view` included); a field
    the library does not declare, or a bad value, is a ParamsError naming the file."""
    from tasks.decontam.params import HashMatchParams

    path = tmp_path / "decontaminate.yaml"
    path.write_text("match:\n  eval_view: raw\n  crops: []\n")
    match = read_section(path, "match", HashMatchParams)
    assert match.crops == [] and match.eval_view == "raw"
    path.write_text("match:\n  eval_view: raw\n  embed_min: 0.8\n")
    with pytest.raises(ParamsError, match="unknown field 'match.embed_min'"):
        read_section(path, "match", HashMatchParams)
    path.write_text("match:\n  eval_view: sideways\n")
    with pytest.raises(ParamsError, match="match.eval_view"):
        read_section(path, "match", HashMatchParams)
    path.write_text("match:\n  eval_view: raw\n  crops: [1.5]\n")
    with pytest.raises(ParamsError, match="kept fractions"):
        read_section(path, "match", HashMatchParams)
