"""Shared storage for every stage: `CLIPMILL_DATA_ROOT=s3://bucket/prefix`, mapped by the runner.

Why a runner-level layer: some libraries read and write fsspec URIs (the crawl's shards, LanceDB)
and go straight to the bucket; others need local files (torch/open_clip checkpoints, the
webdataset tars the train loader reads, numpy). Rather than two copies of each stage's I/O, the
runner (and only the runner: stages do not know) maps a stage's `data/...` deps and outs, as
dvc.yaml lists them (tests/test_dvc_deps.py keeps those lists exact), to the bucket:

- before the stage, `pull()` downloads its deps (and its `persist` outs, so a resumed stage sees
  its finished parts) into the local cache folder `Settings.local_data`, where the stage's
  relative `data/...` params paths resolve (tasks/io/paths.py);
- after the stage succeeded, `push()` uploads its outs, each file atomically (an object store's
  PUT is; elsewhere a temporary name, then a rename: a reader never sees half a file), and
  deletes the bucket's files the out no longer holds;
- a manifest (`<cache>/.dataroot-manifest.json`: sha256, size, mtime and the object's ETag per
  file) makes both directions skip a file that did not change on either side;
- outputs the registry names as fsspec-native (`StageSpec.native_outs`, params keys such as
  crawl's `output.output_dir`) are pointed at the bucket URI instead (`overrides()`), so Ray
  workers on other nodes write into the bucket, never onto their own disk; they are neither
  downloaded nor uploaded.

`check_data_root` runs before any work: a bad URI, missing credentials or a missing bucket stop
the run with a `DataRootError` naming the URI.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import yaml

from tasks.base import StageError
from tasks.io.atomic import atomic_write_json
from tasks.settings import Settings, join_uri

MANIFEST = ".dataroot-manifest.json"
_ENV = "CLIPMILL_DATA_ROOT"


class DataRootError(StageError):
    """The shared data root cannot be used (bad URI, credentials, bucket, missing input); a
    StageError, so the command line prints its message (naming the URI) as one line."""


def check_data_root(uri: str) -> tuple[Any, str]:
    """The filesystem and base path of `uri`, after a request proving the bucket is reachable.

    One listing of the bucket: cheap, and it fails for each of a bad URI (no fsspec
    implementation, no bucket name), missing or wrong credentials and a missing bucket, each
    with its own message naming the URI, before any stage work starts.
    """
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise DataRootError(f"{_ENV}={uri!r} is not a usable fsspec URI: {exc}") from exc
    path = path.rstrip("/")
    bucket = path.split("/", 1)[0]
    if not bucket:
        raise DataRootError(f"{_ENV}={uri!r} names no bucket (write s3://bucket/prefix)")
    try:
        fs.invalidate_cache()
        fs.ls(bucket, detail=False)
    except FileNotFoundError as exc:
        raise DataRootError(
            f"{_ENV}={uri!r}: the bucket {bucket!r} does not exist (create it first)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - credentials, endpoint and permission errors alike
        raise DataRootError(
            f"{_ENV}={uri!r}: cannot list the bucket {bucket!r} ({type(exc).__name__}: {exc}); "
            "check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the instance "
            "role) and, for MinIO or another S3-compatible server, AWS_ENDPOINT_URL"
        ) from exc
    return fs, path


@dataclass(frozen=True)
class StageData:
    """A stage's `data/...` paths from dvc.yaml, relative to the data root (`crawl/shards`)."""

    deps: tuple[str, ...]
    outs: tuple[str, ...]
    persist: tuple[str, ...]


def stage_data(stage: str, roots: tuple[Path, ...]) -> StageData:
    """The stage's data deps and outs as dvc.yaml (the first of `roots` that has one) lists."""
    for root in roots:
        dvc_yaml = root / "dvc.yaml"
        if not dvc_yaml.exists():
            continue
        stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
        if stage in stages:
            entry = stages[stage]
            deps = [_data_rel(d) for d in _names(entry.get("deps", []))]
            outs = [_data_rel(o) for o in _names(entry.get("outs", []))]
            persist = [
                _data_rel(name)
                for o in entry.get("outs", [])
                if isinstance(o, dict)
                for name, opts in o.items()
                if isinstance(opts, dict) and opts.get("persist")
            ]
            return StageData(
                tuple(d for d in deps if d),
                tuple(o for o in outs if o),
                tuple(p for p in persist if p),
            )
    raise DataRootError(
        f"stage {stage!r} is not in dvc.yaml under {', '.join(map(str, roots))}: with "
        f"{_ENV} set the runner needs its data deps and outs from there"
    )


def _names(entries: list[Any]) -> list[str]:
    return [name for e in entries for name in ([e] if isinstance(e, str) else list(e))]


def _data_rel(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[1:]) if len(parts) > 1 and parts[0] == "data" else ""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _token(info: dict[str, Any]) -> str:
    """What identifies an object's content version: its ETag (S3, GCS's md5), else size+mtime."""
    for key in ("ETag", "etag", "md5Hash", "content_md5"):
        if info.get(key):
            return str(info[key]).strip('"')
    return (
        f"{info.get('size')}-{info.get('LastModified') or info.get('mtime') or info.get('created')}"
    )


def _atomic_puts(fs: Any) -> bool:
    """Object stores write an object whole or not at all (no temporary name needed)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return bool({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"} & set(protocols))


@dataclass
class Counts:
    """Files moved and skipped by one pull or push (the stage's metrics get them)."""

    moved: int = 0
    skipped: int = 0
    deleted: int = 0


@dataclass
class DataRoot:
    """A remote data root (fs, base path) and its local cache folder, for one stage run."""

    uri: str
    local: Path
    fs: Any
    base: str
    data: StageData
    native: dict[str, str] = field(default_factory=dict)  # params key -> bucket URI
    native_rels: tuple[str, ...] = ()  # data rels those keys write (never moved by this layer)
    manifest: dict[str, dict[str, Any]] = field(default_factory=dict)

    # -- the manifest -------------------------------------------------------------------------
    def _load(self) -> None:
        path = self.local / MANIFEST
        self.manifest = json.loads(path.read_text()) if path.exists() else {}

    def _save(self) -> None:
        atomic_write_json(self.local / MANIFEST, self.manifest)

    def _local_unchanged(self, key: str, path: Path) -> bool:
        """Whether the local file is the one the manifest recorded (size+mtime, else sha256)."""
        entry = self.manifest.get(key)
        if entry is None or not path.is_file():
            return False
        stat = path.stat()
        if stat.st_size != entry["size"]:
            return False
        if stat.st_mtime_ns == entry["mtime_ns"]:
            return True
        if _sha256(path) != entry["sha256"]:
            return False
        entry["mtime_ns"] = stat.st_mtime_ns  # touched, same bytes: remember the new mtime
        return True

    def _record(self, key: str, path: Path, token: str) -> None:
        stat = path.stat()
        self.manifest[key] = {
            "sha256": _sha256(path),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "etag": token,
        }

    # -- listing --------------------------------------------------------------------------------
    def _remote(self, rel: str) -> dict[str, dict[str, Any]]:
        """Every object under `<base>/<rel>` (a folder or one file) by its key relative to base."""
        path = f"{self.base}/{rel}"
        self.fs.invalidate_cache()
        try:
            found = self.fs.find(path, detail=True)
        except FileNotFoundError:
            found = {}
        if not found and self.fs.isfile(path):
            found = {path: self.fs.info(path)}
        prefix = f"{self.base}/"
        return {
            str(p).removeprefix(prefix): info
            for p, info in found.items()
            if info.get("type", "file") != "directory" and not str(p).endswith(".dataroot.tmp")
        }

    # -- the two directions ---------------------------------------------------------------------
    def pull(self) -> Counts:
        """Download the stage's deps and persist outs that changed; refuse a missing dep.

        Changed files are fetched together (fsspec's concurrent batch `get`) into temporary
        siblings, each then renamed into place: a reader never sees half a file."""
        self._load()
        counts = Counts()
        fetch: dict[str, tuple[Path, str]] = {}  # key -> (local path, remote token)
        wanted = [r for r in (*self.data.deps, *self.data.persist) if not self._native(r)]
        for rel in dict.fromkeys(wanted):
            remote = self._remote(rel)
            if not remote and rel in self.data.deps:
                raise DataRootError(
                    f"{join_uri(self.uri, rel)}: the stage needs it (dvc.yaml deps: data/{rel}) "
                    "but the bucket holds nothing there: run the stage that writes it first"
                )
            for key, info in remote.items():
                path = self.local / key
                token = _token(info)
                if self.manifest.get(key, {}).get("etag") == token and self._local_unchanged(
                    key, path
                ):
                    counts.skipped += 1
                else:
                    fetch[key] = (path, token)
            counts.deleted += self._prune_local(rel, set(remote))
        tmps = {
            key: path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            for key, (path, _) in fetch.items()
        }
        for tmp in tmps.values():
            tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            if fetch:
                self.fs.get([f"{self.base}/{k}" for k in fetch], [str(tmps[k]) for k in fetch])
            for key, (path, token) in fetch.items():
                os.replace(tmps[key], path)
                self._record(key, path, token)
                counts.moved += 1
        finally:
            for tmp in tmps.values():
                tmp.unlink(missing_ok=True)
            self._save()
        return counts

    def push(self) -> Counts:
        """Upload the stage's outs that changed, each file atomically; drop what they dropped.

        Changed files go up together (fsspec's concurrent batch `put`). On an object store
        (S3, GCS, Azure) one PUT is atomic: an object appears whole or not at all, so each
        goes straight to its key; on other filesystems each goes to a temporary name first and
        is renamed. The manifest then records each object's ETag from one listing."""
        self._load()
        counts = Counts()
        for rel in self.data.outs:
            if self._native(rel):
                continue
            folder = self.local / rel
            remote = self._remote(rel)
            files = (
                [folder]
                if folder.is_file()
                else sorted(p for p in folder.rglob("*") if p.is_file())
                if folder.is_dir()
                else []
            )
            local_keys: set[str] = set()
            send: dict[str, Path] = {}
            for path in files:
                key = path.relative_to(self.local).as_posix()
                if path.name.endswith(".tmp") and path.name.startswith("."):
                    continue  # another writer's temporary file, not an output
                local_keys.add(key)
                info = remote.get(key)
                entry = self.manifest.get(key, {})
                if (
                    info is not None
                    and entry.get("etag") == _token(info)
                    and self._local_unchanged(key, path)
                ):
                    counts.skipped += 1
                else:
                    send[key] = path
            if send:
                self._upload(send)
                after = self._remote(rel)
                for key, path in send.items():
                    self._record(key, path, _token(after[key]))
                counts.moved += len(send)
            stale = sorted(set(remote) - local_keys)
            if stale:
                self.fs.rm([f"{self.base}/{k}" for k in stale])
                for key in stale:
                    self.manifest.pop(key, None)
                counts.deleted += len(stale)
            self._save()
        return counts

    def _upload(self, send: dict[str, Path]) -> None:
        targets = [f"{self.base}/{k}" for k in send]
        locals_ = [str(p) for p in send.values()]
        if _atomic_puts(self.fs):
            self.fs.put(locals_, targets)
            return
        tmps = [f"{t}.{uuid.uuid4().hex}.dataroot.tmp" for t in targets]
        self.fs.put(locals_, tmps)
        for tmp, target in zip(tmps, targets, strict=True):
            self.fs.mv(tmp, target)

    # -- helpers --------------------------------------------------------------------------------
    def _native(self, rel: str) -> bool:
        """Whether `rel` is (inside) an output written straight to the bucket."""
        return any(rel == n or rel.startswith(f"{n}/") for n in self.native_rels)

    def _prune_local(self, rel: str, keep: set[str]) -> int:
        """Delete cached files under a dep the bucket no longer holds (an old shard would
        otherwise be read as current)."""
        folder = self.local / rel
        if not folder.is_dir():
            return 0
        removed = 0
        for path in folder.rglob("*"):
            key = path.relative_to(self.local).as_posix()
            if path.is_file() and key not in keep:
                path.unlink()
                self.manifest.pop(key, None)
                removed += 1
        return removed


def for_stage(
    stage: str, native_outs: tuple[str, ...], params: dict[str, Any], settings: Settings
) -> DataRoot | None:
    """The stage's mapping to the remote data root, checked; None when data stays local.

    `native_outs` are the params keys (dotted) the registry marks fsspec-native; each whose value
    is a relative `data/...` path is pointed at the bucket (`DataRoot.native`, params overrides).
    """
    if not settings.remote_data or settings.data_root is None:
        return None
    uri = settings.data_root
    fs, base = check_data_root(uri)
    from tasks import PROJECT_ROOT

    data = stage_data(stage, (settings.root, PROJECT_ROOT))
    native: dict[str, str] = {}
    rels: list[str] = []
    for key in native_outs:
        value: Any = params
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        rel = _data_rel(str(value)) if isinstance(value, str) and "://" not in value else ""
        if rel:
            native[key] = join_uri(uri, rel)
            rels.append(rel)
    local = settings.local_data
    local.mkdir(parents=True, exist_ok=True)
    return DataRoot(uri, local, fs, base, data, native, tuple(rels))
