"""clipmill: stage logic. Every stage lives in a subpackage; nothing here imports Prefect or DVC."""

import os
from pathlib import Path

_PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def find_project_root() -> Path:
    """The project a command works on: $CLIPMILL_ROOT, else the nearest folder up from the
    working directory holding dvc.yaml and params/ (DVC runs stages there), else the checkout
    this package came from. Lets the same installed code drive a copy of the project."""
    if os.environ.get("CLIPMILL_ROOT"):
        return Path(os.environ["CLIPMILL_ROOT"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() and (folder / "params").is_dir():
            return folder
    return _PACKAGE_PARENT


PROJECT_ROOT = find_project_root()
