"""A run's temporary folders go as soon as they are done with: CI's disk filled up when every
test's shards, models and stores lived to the end of the session (~18 GB by then).

A fresh pytest, with tests/conftest.py loaded as a plugin, runs three throwaway modules: the
first makes a module-fixture folder and a function folder and passes, the second checks both are
gone while the session goes on, the third fails and must keep its folders for a look.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tasks import PROJECT_ROOT

MODULE_A = """
import json, pytest

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("module_data")
    (folder / "blob.bin").write_bytes(b"x" * 1000)
    return folder

def test_a(shared, tmp_path):
    (tmp_path / "f.txt").write_text("y")
    RECORD.write_text(json.dumps({"module": str(shared), "function": str(tmp_path)}))
"""

MODULE_B = """
import json
from pathlib import Path

def test_b():
    made = json.loads(RECORD.read_text())
    assert not Path(made["module"]).exists(), made
    assert not Path(made["function"]).exists(), made
"""

MODULE_C = """
import json, pytest

@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    return tmp_path_factory.mktemp("failing_module_data")

def test_c(kept, tmp_path):
    KEPT.write_text(json.dumps({"module": str(kept), "function": str(tmp_path)}))
    assert False, "planted failure"
"""


def test_passed_folders_go_as_soon_as_done_and_failed_ones_stay(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    record, kept = tmp_path / "record.json", tmp_path / "kept.json"
    header = (
        f"from pathlib import Path\nRECORD = Path({str(record)!r})\nKEPT = Path({str(kept)!r})\n"
    )
    for name, body in (("a", MODULE_A), ("b", MODULE_B), ("c", MODULE_C)):
        (suite / f"test_{name}.py").write_text(header + textwrap.dedent(body))
    ini = (PROJECT_ROOT / "pyproject.toml").read_text()
    assert 'tmp_path_retention_policy = "failed"' in ini  # the function half of the promise
    (suite / "pytest.ini").write_text(
        "[pytest]\ntmp_path_retention_policy = failed\ntmp_path_retention_count = 1\n"
    )
    basetemp = tmp_path / "base"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.conftest",
            f"--basetemp={basetemp}",
            str(suite),
        ],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert "1 failed, 2 passed" in out, out[-3000:]
    assert "planted failure" in out
    failed = json.loads(kept.read_text())
    assert Path(failed["module"]).is_dir(), failed  # a failing module keeps its data
    assert Path(failed["function"]).is_dir(), failed
