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
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
MODEL_ARRAYS = ("ptc", "pc", "classes", "nextmove", "nextmove_row", "out_feat")
MIN_CHARS = 3  # texts shorter than this (stripped) get no language


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
def detect_language(text: str, min_chars: int = MIN_CHARS) -> str:
    """ISO 639-1 code of `text`, "" when it is too short to say anything.

    Memoised: alt texts repeat (the sample site's 14k image URLs carry 8k distinct texts).
    """
    if not text or len(text.strip()) < min_chars:
        return ""
    lang, _prob = _identifier().classify(text)
    return str(lang)


def detect_languages(texts: Sequence[str], min_chars: int = MIN_CHARS) -> list[str]:
    """detect_language of each text, for a batch (a WAT file's distinct first texts).

    The same answers as one py3langid call per text, at a fraction of the CPU: py3langid's
    byte-DFA walk runs for all texts at once in NumPy, the naive-Bayes scores are one sparse
    product, and any text whose two best languages score too close for the batch's different
    summation order to be trusted (or that is long, or has no feature) is classified by
    py3langid itself (tests/crawl/test_language.py compares both on many texts).
    """
    out = [""] * len(texts)
    todo = [i for i, text in enumerate(texts) if text and len(text.strip()) >= min_chars]
    if not todo:
        return out
    identifier = _identifier()
    labels: list[str] = []
    for at in range(0, len(todo), BATCH_TEXTS):  # bounded memory: <= BATCH_TEXTS x 512 bytes
        chunk = [texts[i] for i in todo[at : at + BATCH_TEXTS]]
        try:
            labels += _classify_batch(identifier, chunk)
        except AttributeError:  # a py3langid without the internals used here: one at a time
            labels += [str(identifier.classify(text)[0]) for text in chunk]
    for i, label in zip(todo, labels, strict=True):
        out[i] = label
    return out


LANGUAGE_LATER = "?"  # a ref's language left to the plan's reduce (never a language code)


def fill_languages(
    urls: Sequence[str], texts: Sequence[Sequence[str] | None], languages: Sequence[str]
) -> list[str]:
    """The `languages` column of refs in sequence order with every LANGUAGE_LATER resolved.

    Why here and not per file: extraction tasks (extract_wat with languages=False) leave the
    language of their refs for later; the plan's partition reduce, after the cross-file merge by
    URL, calls this once per partition, so py3langid runs once per distinct text of the
    partition instead of once per distinct text of every file. The plan keeps a URL's first
    non-empty language (records.merge_refs), so only the ref that decides it needs a language:
    a pending ref before the URL's first known language whose first text is long enough to be
    classified (py3langid names a language for every such text). That ref gets
    detect_language(its first text), exactly what it would have got in its file; every other
    pending ref gets "" (the merge never reads it). Known languages are kept as they are.
    """
    out = [("" if lang == LANGUAGE_LATER else lang) for lang in languages]
    decided: set[str] = set()  # URLs whose language is already settled by an earlier ref
    chosen: dict[int, str] = {}  # ref index -> its first text, to detect
    for i, url in enumerate(urls):
        if url in decided:
            continue
        lang = languages[i]
        if lang == LANGUAGE_LATER:
            first = texts[i]
            text = first[0] if first else ""
            if text and len(text.strip()) >= MIN_CHARS:
                chosen[i] = text
                decided.add(url)
        elif lang:
            decided.add(url)
    if not chosen:
        return out
    distinct = list(dict.fromkeys(chosen.values()))
    found = dict(zip(distinct, detect_languages(distinct), strict=True))
    if not all(found.values()):  # not expected: then detect every pending ref's text
        every = {
            i: (texts[i] or ("",))[0] for i, lang in enumerate(languages) if lang == LANGUAGE_LATER
        }
        unique = list(dict.fromkeys(every.values()))
        found = dict(zip(unique, detect_languages(unique), strict=True))
        return [found[every[i]] if i in every else lang for i, lang in enumerate(languages)]
    for i, text in chosen.items():
        out[i] = found[text]
    return out


BATCH_TEXTS = 16384  # texts classified together (their byte grid stays under 8 MB)
BATCH_MAX_BYTES = 512  # longer texts are classified one by one (they would pad every row)
_TIE_TOLERANCE = 1e-4  # relative score gap under which py3langid's own float32 sum decides


@lru_cache(maxsize=2)
def _tables(identifier: Any) -> tuple[Any, Any, Any, Any]:
    """py3langid's model as NumPy arrays: next state, row offsets, feature emitted per state,
    and the per-feature class log-probabilities in float32 (kept once per process)."""
    import numpy as np

    nextmove = np.frombuffer(identifier.tk_nextmove, dtype=f"u{identifier.tk_nextmove.itemsize}")
    rowbase = np.asarray(identifier._rowbase, dtype=np.int64)
    output = np.asarray(identifier.tk_output, dtype=np.int64)
    table = np.asarray(identifier.nb_ptc, dtype=np.float32)
    return nextmove, rowbase, output, table


def _classify_batch(identifier: Any, texts: list[str]) -> list[str]:
    """py3langid's classify(text)[0] for every text (norm_probs off, no min_confidence)."""
    import numpy as np
    from scipy.sparse import coo_matrix

    if identifier._norm_probs or identifier.min_confidence is not None:
        return [str(identifier.classify(text)[0]) for text in texts]
    encoded = [identifier._encode(text) for text in texts]
    labels: list[str | None] = [None] * len(texts)
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    short = np.flatnonzero(lengths <= BATCH_MAX_BYTES)
    order = short[np.argsort(-lengths[short], kind="stable")]  # longest first
    if len(order) and lengths[order[0]] > 0:
        nextmove, rowbase, output, table = _tables(identifier)
        lens = lengths[order]
        n = len(order)
        flat = np.frombuffer(b"".join([encoded[i] for i in order.tolist()]), dtype=np.uint8)
        starts = np.cumsum(lens) - lens
        columns = np.zeros((int(lens[0]), n), dtype=np.uint8)  # byte `step` of every text
        columns[np.arange(len(flat)) - np.repeat(starts, lens), np.repeat(np.arange(n), lens)] = (
            flat
        )
        active = np.searchsorted(-lens, -np.arange(int(lens[0])), side="left")
        state = np.zeros(n, dtype=np.int64)
        hit_rows, hit_feats = [], []
        for step, count in enumerate(active.tolist()):
            moved = nextmove[rowbase[state[:count]] + columns[step, :count]].astype(np.int64)
            state[:count] = moved
            feats = output[moved]
            hit = np.flatnonzero(feats >= 0)
            hit_rows.append(hit)
            hit_feats.append(feats[hit])
        rows = np.concatenate(hit_rows)
        weights = coo_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, np.concatenate(hit_feats))),
            shape=(n, table.shape[0]),
        ).tocsr()  # duplicate (text, feature) visits summed: the counts
        np.log1p(weights.data, out=weights.data)
        scores = np.asarray(weights @ table) + np.asarray(identifier.nb_pc, dtype=np.float32)
        for first, dupe in identifier._alias_pairs:
            scores[:, first] = np.maximum(scores[:, first], scores[:, dupe])
            scores[:, dupe] = -np.inf
        best = scores.argmax(axis=1)
        top2 = np.partition(scores, -2, axis=1)[:, -2:]
        gap = top2[:, 1] - top2[:, 0]
        sure = (gap > _TIE_TOLERANCE * np.maximum(np.abs(top2[:, 1]), 1.0)) & (
            np.diff(weights.indptr) > 0
        )
        classes = identifier.nb_classes
        for row, i in enumerate(order.tolist()):
            if sure[row]:
                labels[i] = str(classes[best[row]])
    return [
        label if label is not None else str(identifier.classify(texts[i])[0])
        for i, label in enumerate(labels)
    ]
