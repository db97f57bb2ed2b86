"""The recaption actor: builds the backend chain and the teacher once (Ray Data actor pool),
then annotates whole blocks, writing each block's parquet part and its completion marker itself,
so a SIGKILLed run keeps every finished block.

Row-level faults never fail a block: an image that does not decode, a backend that raises on a
batch, returns the wrong number of annotations or times out, and a malformed reply are written
as the row's `error` with the reason, and the other rows go on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.recaption.backends.base import Annotation, Captioner, CaptionRequest
from tasks.recaption.blocks import PART_SCHEMA, part_path
from tasks.recaption.params import RecaptionParams


def run_chain(chain: list[Captioner], requests: list[CaptionRequest]) -> list[Annotation]:
    """Each backend in order fills what the earlier ones left empty; the tagger's positive tags
    are handed on as `tags`. A backend that raises (or breaks the one-per-request contract)
    gives every row it was asked about that reason; the chain goes on with the next backend."""
    anns = [Annotation() for _ in requests]
    for captioner in chain:
        todo = [i for i, a in enumerate(anns) if a.missing()]
        if not todo:
            break
        reqs = [_with_tags(requests[i], anns[i]) for i in todo]
        try:
            got = captioner.annotate(reqs)
            if len(got) != len(reqs):
                raise RuntimeError(f"returned {len(got)} annotations for {len(reqs)} images")
        except Exception as exc:  # noqa: BLE001 - a backend fault is each row's reason
            reason = f"{captioner.name}: backend raised {type(exc).__name__}: {_stable(exc)}"[:300]
            got = [Annotation(error=reason) for _ in reqs]
        for i, a in zip(todo, got, strict=True):
            anns[i].merge(a)
    return anns


def _with_tags(r: CaptionRequest, a: Annotation) -> CaptionRequest:
    if not a.short_positive:
        return r
    return CaptionRequest(
        uid=r.uid, image=r.image, alt_text=r.alt_text, tags=tuple(a.short_positive), data=r.data
    )


def read_block_images(block: dict[str, Any], crawl_dir: Path) -> dict[str, bytes]:
    """uid -> stored image bytes of the block's rows (rows whose image is gone are absent)."""
    from tasks.io.nodefetch import ensure_local
    from tasks.io.wds import read_images

    by_shard: dict[str, set[str]] = {}
    for uid, shard in zip(block["uid"], block["shard"], strict=True):
        by_shard.setdefault(shard, set()).add(uid)
    found: dict[str, bytes] = {}
    for shard, uids in by_shard.items():
        path = Path(shard) if Path(shard).is_absolute() else crawl_dir / shard
        ensure_local(path)  # a Ray node without the driver's data cache: from the bucket
        if path.exists():
            found.update({k: data for k, data, _ in read_images(path, uids)})
    return found


class RecaptionActor:
    """One per actor: the chain and teacher load in __init__; `__call__` takes a batch of blocks."""

    def __init__(
        self,
        params: RecaptionParams,
        parts_dir: str,
        crawl_dir: str,
        driver_node: str | None = None,
    ) -> None:
        import math

        import torch

        from tasks.recaption.backends.base import build_captioner
        from tasks.recaption.teacher import load_teacher, teacher_ref

        cpu_start = time.process_time()
        threads = params.compute.torch_threads or max(1, math.ceil(params.compute.cpus_per_actor))
        torch.set_num_threads(threads)
        self.p = params
        self.parts_dir = Path(parts_dir)
        self.crawl_dir = Path(crawl_dir)
        self.driver_node = driver_node  # parts written on another node go up to the bucket
        self.chain = [build_captioner(name, params) for name in params.backends]
        self.teacher = load_teacher(teacher_ref(params)) if params.paths.teacher else None
        self.init_cpu = time.process_time() - cpu_start  # reported with this actor's first block

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        keys = ("name", "rows", "errors", "seconds", "cpu_seconds", "skipped")
        out: dict[str, list[Any]] = {k: [] for k in keys}
        for i in range(len(batch["name"])):
            block = {k: _as_list(batch[k][i]) if k != "name" else str(batch[k][i]) for k in batch}
            start, cpu = time.perf_counter(), time.process_time()
            rows, errors, skipped = self.process(block)
            # CPU seconds of this process (all its torch threads), load-independent; the actor's
            # start-up (model, vocabulary embeddings) is counted with its first block
            out["cpu_seconds"].append(time.process_time() - cpu + self.init_cpu)
            self.init_cpu = 0.0
            out["name"].append(block["name"])
            out["rows"].append(rows)
            out["errors"].append(errors)
            out["seconds"].append(time.perf_counter() - start)
            out["skipped"].append(skipped)
        return {k: np.asarray(v) for k, v in out.items()}

    def process(self, block: dict[str, Any]) -> tuple[int, int, bool]:
        """Annotate one block and write it; (rows, rows with an error, already done)."""
        from tasks.io.atomic import atomic_write_bytes, is_done, mark_done

        path = part_path(self.parts_dir, block["name"])
        if is_done(str(path)):
            return len(block["uid"]), 0, True
        table = self.annotate_block(block)
        atomic_write_bytes(path, _parquet_bytes(table))
        errors = int(table["error"].is_valid().to_numpy(zero_copy_only=False).sum())
        mark_done(str(path), {"rows": table.num_rows, "errors": errors})
        # on another Ray node than the driver (no shared disk): part and marker to the bucket
        # data root, where the driver reads them (tasks/io/nodefetch.py)
        from tasks.io.atomic import done_marker
        from tasks.io.nodefetch import publish

        if publish(path, self.driver_node):
            publish(done_marker(str(path)), self.driver_node)
        return table.num_rows, errors, False

    def annotate_block(self, block: dict[str, Any]) -> pa.Table:
        from tasks.imaging.rgb import decode_rgb

        images = read_block_images(block, self.crawl_dir)
        anns: dict[str, Annotation] = {}
        requests: list[CaptionRequest] = []
        for uid, text in zip(block["uid"], block["text"], strict=True):
            data = images.get(uid)
            if data is None:
                anns[uid] = Annotation(error="missing_image: not found in its crawl shard")
                continue
            try:
                requests.append(
                    CaptionRequest(uid=uid, image=decode_rgb(data), alt_text=text, data=data)
                )
            except Exception as exc:  # noqa: BLE001 - PIL raises many types on bad bytes
                anns[uid] = Annotation(
                    error=f"undecodable_image: {type(exc).__name__}: {_stable(exc)}"[:300]
                )
        scores: dict[str, tuple[float | None, ...]] = {}
        size = self.p.compute.batch_size
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            for r, a in zip(chunk, run_chain(self.chain, chunk), strict=True):
                anns[r.uid] = a
            scores.update(self.score(chunk, [anns[r.uid] for r in chunk]))
        return _table(block["uid"], anns, scores)

    def score(
        self, reqs: list[CaptionRequest], anns: list[Annotation]
    ) -> dict[str, tuple[float | None, ...]]:
        """Teacher CLIP scores of the alt text, long positive and long negative of each row."""
        if self.teacher is None or not reqs:
            return {}
        from tasks.recaption.teacher import cosine_rows

        img = self.teacher.encode_images([r.data for r in reqs], [r.image for r in reqs])
        cols = []
        negatives = [a.long_negative or "" for a in anns] if self.p.scores.long_negative else []
        for texts in ([r.alt_text for r in reqs], [a.long_positive or "" for a in anns], negatives):
            present = [i for i, t in enumerate(texts) if t.strip()]
            col: list[float | None] = [None] * len(reqs)
            if present:
                emb = self.teacher.encode_texts([texts[i] for i in present])
                for i, s in zip(present, cosine_rows(img[present], emb), strict=True):
                    col[i] = float(s)
            cols.append(col)
        if not negatives:
            cols[2] = [None] * len(reqs)
        return {r.uid: (cols[0][i], cols[1][i], cols[2][i]) for i, r in enumerate(reqs)}


def _stable(exc: Exception) -> str:
    """An exception's message without object addresses (PIL names its BytesIO `at 0x7f...`),
    so a rerun writes the same reason byte for byte."""
    import re

    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(exc))


def _as_list(value: Any) -> list[Any]:
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _table(
    uids: list[str], anns: dict[str, Annotation], scores: dict[str, tuple[float | None, ...]]
) -> pa.Table:
    none = (None, None, None)
    rows = {
        "uid": uids,
        "long_positive": [anns[u].long_positive for u in uids],
        "long_negative": [anns[u].long_negative for u in uids],
        "short_positive": [anns[u].short_positive for u in uids],
        "short_negative": [anns[u].short_negative for u in uids],
        "sources": [json.dumps(anns[u].sources, sort_keys=True) for u in uids],
        "error": [anns[u].error for u in uids],
        "score_alt": [scores.get(u, none)[0] for u in uids],
        "score_long_positive": [scores.get(u, none)[1] for u in uids],
        "score_long_negative": [scores.get(u, none)[2] for u in uids],
    }
    return pa.table(rows, schema=PART_SCHEMA)


def _parquet_bytes(table: pa.Table) -> bytes:
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())
