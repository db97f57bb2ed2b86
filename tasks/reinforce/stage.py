"""The reinforce stage: K stored augmentations per curated sample, the teacher's embedding of each
view and of every caption field, written beside the curated shards (docs/CONTRACTS.md).

One parquet part per curated shard under `parts/<fingerprint>/`, named by the shard's content
hash and written atomically, so a killed run resumes with the parts already written and a changed
shard or changed params never reuses a stale part. `manifest.json` is written last.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from tasks.reinforce.params import ReinforceParams


class ReinforceError(ValueError):
    """A params mistake or missing input, found before any work; the message names the field."""


def list_shards(spec: str) -> list[Path]:
    from tasks.io.paths import resolve_path

    root = resolve_path(spec)
    shards = sorted(root.glob("*.tar")) if root.is_dir() else sorted(root.parent.glob(root.name))
    if not shards:
        raise ReinforceError(f"shards {spec!r}: no *.tar shards at {root} (run curate first)")
    return shards


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def teacher_key(ref: str) -> str:
    """The teacher's weights key: sha256 of its weights file (a folder), else of the reference."""
    from tasks.clip import WEIGHTS_FILE, is_mlflow_uri, is_random_ref, local_folder

    if is_random_ref(ref) or is_mlflow_uri(ref):
        return hashlib.sha256(ref.encode()).hexdigest()
    weights = Path(local_folder(ref)) / WEIGHTS_FILE
    if not weights.is_file():
        raise ReinforceError(f"teacher {ref!r}: no {WEIGHTS_FILE} in {weights.parent}")
    return file_sha256(weights)


def _sampling(p: ReinforceParams) -> Any:
    from tasks.clip.reinforced import AugSampling

    a = p.augment
    return AugSampling((a.scale_min, a.scale_max), (a.ratio_min, a.ratio_max), a.flip_prob)


def _part(p: ReinforceParams, teacher: Any, shard: Path, dest: Path) -> tuple[int, list[str]]:
    """Embed one shard's samples into `dest`; (rows written, uids skipped as undecodable)."""
    from tasks.clip.reinforced import rows_to_table, write_part
    from tasks.io.wds import read_images
    from tasks.reinforce.embed import decode, embed_samples

    pending, skipped = [], []
    for key, data, parts in read_images(shard):
        try:
            pending.append(decode(key, data, parts, p.caption_fields))
        except Exception:
            skipped.append(key)
    rows = embed_samples(teacher, pending, p.k, _sampling(p), p.seed, p.batch_size)
    table = rows_to_table(rows, p.k, teacher.embed_dim, p.dtype, p.caption_fields)
    table = table.replace_schema_metadata({"skipped_uids": json.dumps(skipped)})
    write_part(dest, table)
    return len(rows), skipped


def _done_part(dest: Path) -> tuple[int, list[str]]:
    import pyarrow.parquet as pq

    meta = pq.read_metadata(dest)
    skipped = json.loads((meta.metadata or {}).get(b"skipped_uids", b"[]"))
    return meta.num_rows, list(skipped)


def run(params: ReinforceParams) -> dict[str, Any]:
    """Write (or complete) the reinforced dataset; metrics: rows, views, skips, resume, speed."""
    import torch

    from tasks.clip.reinforced import MANIFEST_FILE, PARTS_DIR, Manifest
    from tasks.io.atomic import atomic_write_json
    from tasks.io.paths import resolve_path
    from tasks.progress import Progress
    from tasks.reinforce.embed import load_teacher, params_digest

    shards = list_shards(params.shards)
    key = teacher_key(params.teacher)
    if params.torch_threads:
        torch.set_num_threads(params.torch_threads)
    teacher = load_teacher(params.teacher, params.device)
    sampling = _sampling(params)
    fp = params_digest(
        {
            "teacher": key,
            "view": teacher.view.as_dict(),
            "k": params.k,
            "dtype": params.dtype,
            "fields": params.caption_fields,
            "seed": params.seed,
            "augment": params.augment.model_dump(),
        }
    )
    out = resolve_path(params.output_dir)
    part_dir = out / PARTS_DIR / fp
    t0, rows, made, resumed = time.perf_counter(), 0, 0, 0
    skipped: list[str] = []
    parts: list[str] = []
    progress = Progress("reinforce: shards", total=len(shards), unit="shards")
    for shard in shards:
        dest = part_dir / f"part-{shard.stem}-{file_sha256(shard)[:12]}.parquet"
        if dest.is_file():
            n, skip = _done_part(dest)
            resumed += 1
        else:
            n, skip = _part(params, teacher, shard, dest)
            made += n
        rows, parts = rows + n, [*parts, str(dest.relative_to(out))]
        skipped += skip
        progress.update(1, rows=rows)
    progress.close()
    keep = {Path(p).name for p in parts}
    for stale in part_dir.glob("*.parquet"):  # parts of shards no longer there
        if stale.name not in keep:
            stale.unlink()
    for other in (out / PARTS_DIR).iterdir():  # other params or teachers
        if other.is_dir() and other.name != fp:
            shutil.rmtree(other)
    seconds = time.perf_counter() - t0
    manifest = Manifest(
        teacher=params.teacher,
        teacher_weights_sha256=key,
        k=params.k,
        embed_dim=teacher.embed_dim,
        dtype=params.dtype,
        view=teacher.view,
        sampling=sampling,
        caption_fields=tuple(params.caption_fields),
        seed=params.seed,
        source_shards=params.shards,
        parts=tuple(parts),
        rows=rows,
        extra={"logit_scale": teacher.logit_scale, "fingerprint": fp, "skipped_uids": skipped},
    )
    atomic_write_json(out / MANIFEST_FILE, manifest.to_json())
    return {
        "rows": rows,
        "views": rows * params.k,
        "shards": len(shards),
        "parts_resumed": resumed,
        "skipped_undecodable": len(skipped),
        "embed_dim": teacher.embed_dim,
        "seconds": round(seconds, 3),
        "views_per_s": round(made * params.k / seconds, 2) if seconds > 0 else 0.0,
        "bytes": sum((out / p).stat().st_size for p in parts),
    }
