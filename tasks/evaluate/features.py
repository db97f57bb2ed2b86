"""One model's image and text embeddings, each computed once per evaluate run, reused by every task.

Zero-shot, retrieval, the linear probe, PerceptionCLIP, the robustness checks' clean accuracy and
the membership audit all ask this object for embeddings. It keys every image by the content id
of its bytes and every text by that of its utf-8 (`tasks.clip.featurestore.content_id`), so an
image met twice (emoji groups and subgroups share their images; the membership audit's shift set
is the retrieval set; robustness scores the first images of a set) is encoded once, and every
prompt of the zero-shot, PerceptionCLIP and robustness classifiers once.

Below the in-memory memo sits the feature store (tasks/clip/featurestore.py): each tower is
split at its frozen part (tasks/clip/locked.py: a timm trunk, an HF transformer + pooler, else
the whole tower) and the frozen features are stored under the tower's key; a model whose frozen
part matches one evaluated before (a LiT teacher retrained on other data, the same student
evaluated again) reads them and applies only its head. It is a pure cache: the head runs over
the frozen features in the same `batch_size` chunks whether they were read or computed, so the
numbers are the same with and without it (tests/evaluate/test_features.py).

Images missing from the store are decoded and preprocessed on `decode_threads` threads while
the model runs on the previous batch, in process (`embed.ray` = "auto" uses a Ray Data actor
pool only for large sets on a Ray cluster with more CPUs than this machine: on one machine the
pool's single-threaded actors are slower than one process using every core).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.evaluate.embed import LABEL, autocast, pixel_batch
from tasks.evaluate.params import EmbedParams
from tasks.progress import Progress

TEXT_LABEL = "evaluate: embedding texts"  # progress lines of long text passes


@dataclass
class EmbedStats:
    """How each embedding came to be: what a run reports (`embedding` in its metrics)."""

    images_requested: int = 0  # image embeddings handed out (with repeats)
    images_unique: int = 0  # distinct images embedded (content ids)
    images_from_store: int = 0  # of those, frozen features read from the store
    images_computed: int = 0  # of those, frozen features computed here
    texts_requested: int = 0
    texts_unique: int = 0
    texts_from_store: int = 0
    texts_computed: int = 0
    image_seconds: float = 0.0  # wall time spent embedding images
    text_seconds: float = 0.0  # wall time spent embedding texts
    by: dict[str, str] = field(default_factory=dict)  # "image"/"text" -> store key (or "")

    def as_metrics(self) -> dict[str, float]:
        out = {k: float(v) for k, v in vars(self).items() if isinstance(v, int | float)}
        out["images_per_s"] = (
            self.images_computed / self.image_seconds if self.image_seconds else 0.0
        )
        return out


class _Memo:
    """Normalised embeddings by content id, appended in chunks; rows handed out by index."""

    def __init__(self) -> None:
        self.row: dict[str, int] = {}
        self._chunks: list[Any] = []
        self._matrix: Any = None

    def missing(self, ids: Sequence[str]) -> list[int]:
        """Index of the first occurrence of every id not memoised yet, in order."""
        seen: set[str] = set()
        out = []
        for n, i in enumerate(ids):
            if i not in self.row and i not in seen:
                seen.add(i)
                out.append(n)
        return out

    def add(self, ids: Sequence[str], emb: Any) -> None:
        start = len(self.row)
        for k, i in enumerate(ids):
            self.row[i] = start + k
        self._chunks.append(emb)
        self._matrix = None

    def take(self, ids: Sequence[str]) -> Any:
        import torch

        if self._matrix is None:
            self._matrix = torch.cat(self._chunks) if self._chunks else torch.zeros(0)
            self._chunks = [self._matrix]
        return self._matrix[torch.as_tensor([self.row[i] for i in ids], dtype=torch.long)]


class Embedder:
    """Embeddings of one loaded model (tasks/evaluate/loading.py `LoadedModel`), memoised by
    content and backed by the feature store at `store_root` (None = no store).

    `stores` (key -> `FeatureStore`), shared by the embedders of one run, opens each tower's
    store once: the models of a merge suite share the teacher's locked towers, and each store
    object of their own re-read every part file of those towers (the whole crawled pool's
    features) into memory, once per model. The same features either way (a pure cache)."""

    def __init__(
        self,
        loaded: Any,
        params: EmbedParams,
        store_root: Path | None,
        stores: dict[str, Any] | None = None,
    ) -> None:
        from tasks.clip.locked import split_image, split_text, tokenizer_config

        self.loaded = loaded
        self.params = params
        model = loaded.model
        if params.channels_last:
            model.to(memory_format=_channels_last())
        self.image_split = split_image(model, image_preprocess_config(model))
        self.text_split = _trimmed(model, split_text(model, tokenizer_config(loaded.model_cfg)))
        self.image_store = open_store(store_root, self.image_split.key, stores)
        self.text_store = open_store(store_root, self.text_split.key, stores)
        self._images = _Memo()
        self._texts = _Memo()
        self.stats = EmbedStats(
            by={
                "image": self.image_split.key if store_root else "",
                "text": self.text_split.key if store_root else "",
            }
        )

    @property
    def name(self) -> str:
        return str(self.loaded.name)

    def images(self, images: Sequence[bytes], label: str = LABEL) -> Any:
        """L2-normalised float32 (n, d) embeddings of encoded images, in order."""
        import time

        from tasks.clip.featurestore import content_id

        ids = [content_id(b) for b in images]
        self.stats.images_requested += len(ids)
        todo = self._images.missing(ids)
        if todo:
            started = time.perf_counter()
            new_ids = [ids[n] for n in todo]
            new = [images[n] for n in todo]
            frozen, computed = self._frozen_images(new_ids, new, label)
            self._images.add(new_ids, self._head(self.image_split, frozen))
            self.stats.images_unique += len(todo)
            self.stats.images_computed += computed
            self.stats.images_from_store += len(todo) - computed
            self.stats.image_seconds += time.perf_counter() - started
        return self._images.take(ids)

    def texts(self, texts: Sequence[str], label: str = TEXT_LABEL) -> Any:
        """L2-normalised float32 (n, d) embeddings of texts, in order."""
        import time

        from tasks.clip.featurestore import content_id, encode_missing

        ids = [content_id(t) for t in texts]
        self.stats.texts_requested += len(ids)
        todo = self._texts.missing(ids)
        if todo:
            started = time.perf_counter()
            # shortest first: each batch is cut to its longest prompt (text_trim.py, the HF
            # towers' own trim), so like lengths together cut the most; rows are independent
            todo = sorted(todo, key=lambda n: len(texts[n]))
            new_ids = [ids[n] for n in todo]
            new = [texts[n] for n in todo]
            tokenizer = self.loaded.tokenizer
            with Progress(label, total=len(new), unit="texts") as progress:
                frozen, computed = encode_missing(
                    self.text_split,
                    self.text_store,
                    new_ids,
                    lambda idx: tokenizer([new[i] for i in idx]),
                    self.params.text_batch_size,
                    progress.update,
                )
            self._texts.add(new_ids, self._head(self.text_split, frozen))
            self.stats.texts_unique += len(todo)
            self.stats.texts_computed += computed
            self.stats.texts_from_store += len(todo) - computed
            self.stats.text_seconds += time.perf_counter() - started
        return self._texts.take(ids)

    def text_encoder(self) -> Callable[[list[str]], Any]:
        """What the zero-shot classifier builders take: prompts -> embeddings."""
        return lambda texts: self.texts(texts)

    def _frozen_images(
        self, ids: list[str], images: list[bytes], label: str
    ) -> tuple[np.ndarray, int]:
        """Frozen features of distinct images (stored ones read, the others computed and
        stored), and how many were computed."""
        if self.image_store is not None:
            feats, found = self.image_store.lookup(ids)
        else:
            feats, found = np.zeros((len(ids), 0), np.float32), np.zeros(len(ids), bool)
        todo = np.flatnonzero(~found).tolist()
        if not todo:
            return feats, 0
        with Progress(label, total=len(todo), unit="images") as progress:
            if use_ray(len(todo), self.params):
                computed = frozen_via_ray(self.loaded.ref, [images[n] for n in todo], self.params)
                progress.update(len(todo))
            else:
                computed = self._frozen_local([images[n] for n in todo], progress.update)
        if self.image_store is not None:
            self.image_store.add([ids[n] for n in todo], computed)
        if feats.shape[1] != computed.shape[1]:
            feats = np.zeros((len(ids), computed.shape[1]), np.float32)
        feats[todo] = computed
        return feats, len(todo)

    def _frozen_local(self, images: list[bytes], on_batch: Callable[[int], None]) -> np.ndarray:
        """Frozen features in `batch_size` batches; with decode_threads > 0 the next batches
        are decoded and preprocessed while the model runs."""
        p = self.params
        preprocess = self.loaded.preprocess
        batches = [images[i : i + p.batch_size] for i in range(0, len(images), p.batch_size)]
        out: list[np.ndarray] = []

        def run(pixels: Any) -> None:
            if p.channels_last:
                pixels = pixels.contiguous(memory_format=_channels_last())
            with autocast(p.amp):
                feats = self.image_split.frozen(pixels)
            out.append(feats.float().numpy())
            on_batch(len(pixels))

        if p.decode_threads <= 0:
            for b in batches:
                run(pixel_batch(b, preprocess))
        else:
            with ThreadPoolExecutor(p.decode_threads) as pool:
                ahead = p.decode_threads + 1
                pending = deque(pool.submit(pixel_batch, b, preprocess) for b in batches[:ahead])
                for nxt in batches[ahead:] + [None] * ahead:
                    if not pending:
                        break
                    pixels = pending.popleft().result()
                    if nxt is not None:
                        pending.append(pool.submit(pixel_batch, nxt, preprocess))
                    run(pixels)
        return np.concatenate(out).astype(np.float32, copy=False)

    def _head(self, split: Any, frozen: np.ndarray) -> Any:
        """Normalised head outputs over the frozen features, in `batch_size` chunks: the same
        computation whether the features were read from the store or computed. The features
        are moved to the tower's device once: `split.head` looks the device up on every call by
        listing the frozen modules' parameters (the whole trunk), which cost more than the
        head's own matmul per chunk (a profile of evaluate_merge: 27 s of 112 s in `_head`)."""
        import torch
        import torch.nn.functional as F

        feats = torch.from_numpy(np.ascontiguousarray(frozen)).to(split.device)
        step = self.params.batch_size
        chunks = []
        with torch.no_grad(), autocast(self.params.amp):
            for i in range(0, len(feats), step):
                chunks.append(F.normalize(split.head_fn(feats[i : i + step]), dim=-1).float())
        return torch.cat(chunks) if chunks else torch.zeros(0)


def open_store(root: Path | None, key: str, shared: dict[str, Any] | None) -> Any:
    """The `FeatureStore` of `key` under `root` (None without a root): the one in `shared` when
    an embedder of this run opened it already (its features are in memory), else a new one,
    remembered there."""
    from tasks.clip.featurestore import FeatureStore

    if root is None:
        return None
    if shared is None:
        return FeatureStore(root, key)
    where = f"{Path(root).resolve()}/{key}"
    if where not in shared:
        shared[where] = FeatureStore(root, key)
    return shared[where]


def _trimmed(model: Any, split: Any) -> Any:
    """The whole-tower text split of a causal CLIP text tower, encoding tokens cut to each
    batch's longest prompt (tasks/evaluate/text_trim.py: same features, ~1/3 of the compute
    for the demo's prompts); any other split unchanged. The store key stays: same features."""
    import dataclasses

    from tasks.evaluate.text_trim import trimmed_text_encoder

    if split.frozen_fn != model.encode_text:
        return split
    encode = trimmed_text_encoder(model)
    return split if encode is None else dataclasses.replace(split, frozen_fn=encode)


def image_preprocess_config(model: Any) -> dict[str, Any]:
    """The preprocessing open_clip recorded on the model (size, mean, std, interpolation,
    resize mode): the same dict the teacher and curate key their stored features by."""
    from open_clip.model import get_model_preprocess_cfg

    return dict(get_model_preprocess_cfg(model))


def _channels_last() -> Any:
    import torch

    return torch.channels_last


def use_ray(n: int, params: EmbedParams) -> bool:
    """ "always": Ray whenever it is up; "never": in process; "auto": only for `ray_min_samples`
    images or more on a Ray cluster with more CPUs than this machine has."""
    if params.ray == "never" or n < params.ray_min_samples:
        return False
    import ray

    if not ray.is_initialized():
        return False
    if params.ray == "always":
        return True
    import os

    return float(ray.cluster_resources().get("CPU", 0)) > (os.cpu_count() or 1)


class FrozenImageEmbedder:
    """Ray Data actor: loads the model once in `__init__`, returns frozen image features."""

    def __init__(self, model_ref: str, amp: bool = False, channels_last: bool = False) -> None:
        import torch

        from tasks.clip.locked import split_image
        from tasks.evaluate.loading import load_model

        torch.set_num_threads(1)
        self.loaded = load_model(model_ref)
        if channels_last:
            self.loaded.model.to(memory_format=_channels_last())
        self.split = split_image(self.loaded.model, image_preprocess_config(self.loaded.model))
        self.amp = amp
        self.channels_last = channels_last

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = pixel_batch(list(batch["image"]), self.loaded.preprocess)
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=_channels_last())
        with autocast(self.amp):
            feats = self.split.frozen(pixels).float().numpy()
        return {"index": np.asarray(batch["index"]), "features": feats}


def frozen_via_ray(model_ref: str, images: Sequence[bytes], params: EmbedParams) -> np.ndarray:
    """Frozen features through `map_batches` with a small actor pool; rows sorted by index."""
    import ray

    items = [{"index": i, "image": b} for i, b in enumerate(images)]
    ds = ray.data.from_items(items, override_num_blocks=min(params.num_blocks, max(1, len(items))))
    out = ds.map_batches(
        FrozenImageEmbedder,
        fn_constructor_kwargs={
            "model_ref": model_ref,
            "amp": params.amp,
            "channels_last": params.channels_last,
        },
        batch_size=params.batch_size,
        batch_format="numpy",
        concurrency=params.actors,
        num_cpus=params.cpus_per_actor,
    )
    index, feats = [], []
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        index.append(batch["index"])
        feats.append(batch["features"])
    order = np.argsort(np.concatenate(index), kind="stable")
    return np.concatenate(feats)[order].astype(np.float32, copy=False)
