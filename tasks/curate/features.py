"""Per-image features on Ray Data: sha256, pHash, dHash (the library's tasks/decontam), CLIP
embeddings (actor pool).

Shards are read where they are processed; the model is built once per actor (`__init__`), never
shipped from the driver. Undecodable images come back with a reason, not as missing rows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.decontam.reading import (
    ReadAndHash,
    hash_items,
    read_shard,
    shard_items,
    whole_images,
)
from tasks.progress import Progress


class Embedder:
    """Ray Data callable class: one CLIP model per actor; L2-normalised image and text embeddings.

    With `store_root` the locked towers' frozen features come from the feature store there
    (tasks/curate/cached.py): only the heads run for what the teacher stored."""

    def __init__(
        self, model_ref: str, threads: int = 1, store_root: str | None = None, batch_size: int = 64
    ) -> None:
        import torch

        from tasks.clip import load_clip

        torch.set_num_threads(max(1, threads))
        self.model, self.preprocess, self.tokenizer = load_clip(model_ref)
        self.cache = None
        if store_root is not None:
            from tasks.curate.cached import CachedTowers

            self.cache = CachedTowers.open(self.model, model_ref, Path(store_root), batch_size)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return embed_table(batch, self.model, self.preprocess, self.tokenizer, self.cache)


def embed_table(
    batch: pa.Table, model: Any, preprocess: Any, tokenizer: Any, cache: Any = None
) -> pa.Table:
    """The one embedding code path (actors and driver alike): rows with an image_reason get nulls.
    `cache` (a cached.CachedTowers of `model`) reads stored frozen features instead of running
    the locked towers again; the result is the same within float tolerance."""
    import torch

    from tasks.curate.cached import normalised
    from tasks.curate.images import decode_rgb

    n = batch.num_rows
    wanted = (
        batch.column("embed").to_pylist() if "embed" in batch.column_names else [True] * n
    )  # eval crops are hashed only
    reasons = batch.column("image_reason").to_pylist()
    ok = [r is None and bool(w) for r, w in zip(reasons, wanted, strict=True)]
    idx = [i for i in range(n) if ok[i]]
    img_emb: list[Any] = [None] * n
    txt_emb: list[Any] = [None] * n
    if idx:
        images = batch.column("image").to_pylist()
        data = [images[i] for i in idx]
        all_texts = batch.column("text").to_pylist()
        texts = [all_texts[i] or "" for i in idx]

        def pixels(which: list[int]) -> Any:
            return torch.stack([preprocess(decode_rgb(data[j])) for j in which])

        def tokens(which: list[int]) -> Any:
            return tokenizer([texts[j] for j in which])

        everything = list(range(len(idx)))
        with torch.no_grad():
            if cache is None:
                iv = normalised(model.encode_image(pixels(everything)))
                tv = normalised(model.encode_text(tokens(everything)))
            else:
                iv = normalised(cache.encode_images(data, pixels))
                tv = normalised(cache.encode_texts(texts, tokens))
        for j, i in enumerate(idx):
            img_emb[i], txt_emb[i] = iv[j].astype(np.float32), tv[j].astype(np.float32)
    typ = pa.list_(pa.float32())  # fixed width is set once all batches are in (fix_vectors)
    return (
        batch.drop_columns(["image"])
        .append_column("image_emb", pa.array(img_emb, typ))
        .append_column("text_emb", pa.array(txt_emb, typ))
    )


def compute_features(
    shard_rows: dict[str, list[tuple[str, str]]],
    model_ref: str | None,
    embed_workers: int,
    embed_batch_size: int,
    cpus_per_worker: float,
    prefixes: dict[str, str] | None = None,
    view: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    chunk: int = 1000,
    what: str = "images",
    store_root: Path | None = None,
    known: dict[str, tuple[str, str]] | None = None,
) -> pa.Table:
    """Features of every (uid, text) listed per shard path: uid, image_sha256, phash, dhash,
    image_reason, and with a model image_emb / text_emb. Runs on the current Ray.
    `prefixes` (shard -> text) makes uids unique when shards reuse keys (eval sets do).
    `view` maps one read row to the rows to featurise instead (evalsets.EvalView: the crawl's
    resize + encode, crops); image_sha256 is then the digest of the viewed bytes.
    Progress ("curate: embedding <what> 1,200/40,000 ...") counts the images read, on the driver
    as batches arrive: a view's crops are not counted, so the total is known up front.
    `store_root`: the feature store the embedding actors read the locked towers' features from
    (None = run the whole towers); `known`: sha256 -> (pHash, dHash) of images hashed before
    (the decontaminate stage's crawl_hashes.parquet), not decoded again."""
    import ray

    items = shard_items(shard_rows, prefixes, chunk)  # at most `chunk` rows per block
    if not items:
        return pa.table({"uid": pa.array([], pa.string())})
    if model_ref is None:  # hashes only: one fused task per block, no image leaves it
        return hash_items(items, read_shard, view, f"curate: hashing {what}", known)
    ds: ray.data.Dataset = ray.data.from_items(items, override_num_blocks=len(items))
    # read + view + hash in the read tasks (a chained map_batches would be fused into the
    # embedding actor, leaving a second CPU idle); images go on to the actors
    ds = ds.flat_map(ReadAndHash(read_shard, view, known or None, keep_images=True))
    ds = ds.map_batches(
        Embedder,
        fn_constructor_args=(
            model_ref,
            max(1, int(cpus_per_worker)),
            None if store_root is None else str(store_root),
            embed_batch_size,
        ),
        compute=ray.data.ActorPoolStrategy(size=embed_workers),
        batch_size=embed_batch_size,
        batch_format="pyarrow",
        num_cpus=cpus_per_worker,
    )
    total = sum(len(rows) for rows in shard_rows.values())
    label = f"curate: embedding {what}"
    parts: list[pa.Table] = []
    with Progress(label, total=total, unit="images") as progress:
        for part in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            parts.append(part)
            progress.update(whole_images(part))
    return fix_vectors(pa.concat_tables(parts, promote_options="permissive"))


def fix_vectors(table: pa.Table) -> pa.Table:
    """Embedding columns as fixed_size_list<float32>[dim] (what LanceDB stores as vectors).

    Built from a dense matrix plus a validity mask: nulls keep a zero slot of full width, which
    LanceDB's vector checks and parquet both require.
    """
    for name in ("image_emb", "text_emb"):
        if name not in table.column_names:
            continue
        values = table.column(name).to_pylist()
        dim = next((len(v) for v in values if v is not None), 0)
        if not dim:
            continue
        dense = np.zeros((len(values), dim), dtype=np.float32)
        valid = np.array([v is not None for v in values], dtype=bool)
        if valid.any():
            dense[valid] = np.array([v for v in values if v is not None], dtype=np.float32)
        arr = pa.FixedSizeListArray.from_arrays(pa.array(dense.ravel()), dim, mask=pa.array(~valid))
        table = table.set_column(table.column_names.index(name), name, arr)
    return table


def existing_shard(crawl_dir: Path, shard: str | None) -> Path | None:
    """The crawl shard holding a row's image (a tar, a files/ folder or an image parquet: the
    crawl's output.output_format, read by tasks/io/crawlshards.py), or None when the pool names
    none or it is gone."""
    if not shard:
        return None
    path = Path(shard) if Path(shard).is_absolute() else crawl_dir / shard
    return path if path.exists() else None
