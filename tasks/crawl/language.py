"""Language of a text with py3langid, whose model ships inside the wheel (no download at run time).

py3langid unpacks its LZMA-compressed model on every process start: half a CPU-second, paid by
every crawl before the first URL is planned. The unpacked model is kept once in the cache
directory (per py3langid version and model file), so later starts only read it. Anything odd
about the cached copy falls back to py3langid's own loader; the classifier is the same object.
"""

from __future__ import annotations

import logging
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
MODEL_ARRAYS = ("ptc", "pc", "classes", "nextmove", "nextmove_row", "out_feat")


def _packed_model() -> Path:
    from py3langid import langid

    return Path(langid.MODEL_DIR) / langid.MODEL_FILE


def _cached_model(cache_dir: Path) -> Path:
    """The unpacked model in the cache, written (atomically) on first use."""
    import lzma
    import shutil
    from importlib.metadata import version

    packed = _packed_model()
    st = packed.stat()
    path = cache_dir / f"py3langid-{version('py3langid')}-{st.st_size}-{int(st.st_mtime)}.npz"
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, lzma.open(packed) as src:
                shutil.copyfileobj(src, out, length=1 << 20)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def _uint_array(values: Any) -> Any:
    """A NumPy unsigned array as the stdlib array py3langid's tokenizer indexes (much faster)."""
    from array import array

    import numpy as np

    out = array({2: "H", 4: "I", 8: "L"}[values.dtype.itemsize])
    out.frombytes(np.ascontiguousarray(values).tobytes())
    return out


def _from_cache(cache_dir: Path) -> Any:
    import numpy as np
    from py3langid.langid import LanguageIdentifier

    with np.load(_cached_model(cache_dir), allow_pickle=False) as data:
        missing = set(MODEL_ARRAYS) - set(data.files)
        if missing:
            raise ValueError(f"cached py3langid model lacks {sorted(missing)}")
        return LanguageIdentifier(
            np.asarray(data["ptc"]),
            np.asarray(data["pc"]),
            data["classes"].tolist(),
            _uint_array(data["nextmove"]),
            data["out_feat"].tolist(),
            tk_row=_uint_array(data["nextmove_row"]),
        )


def load_identifier(cache_dir: Path) -> Any:
    """py3langid's classifier, from the unpacked copy in `cache_dir` when it can be used."""
    try:
        from py3langid import langid
    except ImportError as exc:  # pragma: no cover - the package is pinned in requirements
        raise ImportError("the crawl stage needs py3langid (requirements/extra.txt)") from exc
    try:
        return _from_cache(cache_dir)
    except Exception as exc:  # noqa: BLE001 - a read-only home or a new model layout: unpack anew
        log.warning("py3langid model cache unusable (%s); unpacking the packaged model", exc)
        return langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE)


@lru_cache(maxsize=1)
def _identifier() -> Any:
    from tasks.settings import get_settings

    return load_identifier(get_settings().cache_dir / "models")


@lru_cache(maxsize=1 << 16)
def detect_language(text: str, min_chars: int = 3) -> str:
    """ISO 639-1 code of `text`, "" when it is too short to say anything.

    Memoised: alt texts repeat (the sample site's 14k image URLs carry 8k distinct texts).
    """
    if not text or len(text.strip()) < min_chars:
        return ""
    lang, _prob = _identifier().classify(text)
    return str(lang)
