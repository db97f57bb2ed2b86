"""The library sits below every stage: nothing in tasks/clip imports a stage package."""

from __future__ import annotations

import ast
from pathlib import Path

import tasks.clip

STAGE_PACKAGES = ("sample", "crawl", "curate", "train", "evaluate", "recaption", "merge")


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_library_imports_no_stage() -> None:
    root = Path(tasks.clip.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert len(files) >= 5
    bad = {
        f"{f.relative_to(root)}: {m}"
        for f in files
        for m in _imported_modules(f)
        if m.split(".")[:2] in [["tasks", s] for s in STAGE_PACKAGES]
    }
    assert not bad, f"tasks/clip must not import stage packages: {sorted(bad)}"


def test_importing_the_library_loads_no_heavy_engine() -> None:
    """Listing stages or validating params imports tasks.clip's names; torch must stay unloaded."""
    import subprocess
    import sys

    code = (
        "import sys, tasks.clip; print(sorted({'torch', 'open_clip', 'mlflow'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root_dir()
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def root_dir() -> Path:
    return Path(tasks.clip.__file__).resolve().parents[2]
