"""`clipmill lineage RUN_ID_OR_MODEL_VERSION`: where a result came from, as a tree.

evaluation run -> the model versions it scored -> each model's training run -> the curated data
it read (uid list hash and the DVC md5 of the output holding its shards, both tagged on the
training run by tasks/train/tracking.py) -> the run that made that data (curate) and its params
-> the runs that fed it (recaption, merge where present; crawl).

Runs carry no explicit link to the run that produced their input, so an upstream run is chosen
as: the latest FINISHED run of that stage that ended before this run started, preferring one
under the same pipeline (parent) run. The DVC md5 recorded at training time is compared with
today's dvc.lock, so a tree whose data has since been rebuilt says so.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_MODEL_REF = re.compile(r"^(?:models:/)?(?P<name>[^/\s]+)/(?P<version>\d+)$")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# Which stage's runs fed a stage's input (searched in this order; absent ones are skipped).
FEEDS = {
    "curate": ("recaption", "teacher", "crawl"),
    "recaption": ("crawl",),
    "merge": ("curate",),
    "teacher": ("decontaminate", "crawl"),
    "decontaminate": ("crawl",),
    "crawl": ("sample",),
}


class LineageError(ValueError):
    """The reference names no run or model version in the tracking store."""


@dataclass
class Node:
    """One line of the tree, its detail lines and what it came from."""

    label: str
    details: list[str] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)

    def render(self) -> str:
        return "\n".join(self._lines("", ""))

    def _lines(self, first: str, rest: str) -> list[str]:
        out = [first + self.label]
        items: list[str | Node] = [*self.details, *self.children]
        for i, item in enumerate(items):
            last = i == len(items) - 1
            head, cont = ("└─ ", "   ") if last else ("├─ ", "│  ")
            if isinstance(item, Node):
                out += item._lines(rest + head, rest + cont)
            else:
                out.append(rest + head + item)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "details": self.details,
            "children": [c.to_dict() for c in self.children],
        }


def lineage(ref: str, client: Any | None = None, root: Path | None = None) -> Node:
    """The tree for a run id, or a model version (`name/3`, `models:/name/3`)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tasks.settings import get_settings
    from tasks.tracking import configure_mlflow

    if client is None:
        configure_mlflow()
        client = MlflowClient()
    root = root or get_settings().root
    walker = _Walker(client, root)
    match = _MODEL_REF.match(ref.strip())
    try:
        if match:
            version = client.get_model_version(match["name"], match["version"])
            return walker.training(client.get_run(str(version.run_id)))
        if not _RUN_ID.match(ref.strip()):
            raise LineageError(
                f"{ref!r} is neither an MLflow run id (32 hex digits) nor a model version "
                "(NAME/VERSION or models:/NAME/VERSION)"
            )
        return walker.run(client.get_run(ref.strip()))
    except MlflowException as exc:
        raise LineageError(f"{ref!r}: not found in the tracking store ({exc.message})") from None


class _Walker:
    def __init__(self, client: Any, root: Path) -> None:
        self.client = client
        self.root = root
        self.experiment_ids = [e.experiment_id for e in client.search_experiments()]
        self.shown: set[str] = set()  # runs already printed in full

    def run(self, run: Any) -> Node:
        stage = run.data.tags.get("clipmill.stage", "")
        if stage == "evaluate" or stage.startswith("evaluate"):
            return self.evaluation(run)
        if "clipmill.model_dir" in run.data.tags:
            return self.training(run)
        return self.stage(run)

    def evaluation(self, run: Any) -> Node:
        node = Node(_run_label("evaluation", run), _summary(run))
        models = _json_list(run.data.params, ".models")
        for model_dir in models:
            trained = self.find_training(model_dir, run)
            if trained is None:
                node.children.append(Node(f"model {model_dir}: no training run found before it"))
            else:
                node.children.append(self.training(trained))
        return node

    def training(self, run: Any) -> Node:
        tags = run.data.tags
        version = tags.get("clipmill.registered_model", "not registered")
        node = Node(f"model version {version}")
        train = Node(_run_label("training run", run), _summary(run))
        node.children.append(train)
        data = Node(f"training data {tags.get('clipmill.data_shards', '?')}")
        uid_hash = tags.get("clipmill.data_uid_list_sha256")
        data.details.append(f"uid list sha256 {uid_hash}" if uid_hash else "uid list: not recorded")
        md5 = tags.get("clipmill.data_dvc_md5")
        source = tags.get("clipmill.data_dvc_stage")
        if md5:
            data.details.append(f"DVC md5 {md5} (output of stage {source}; {self._lock(md5)})")
        else:
            data.details.append("DVC md5: not recorded (dvc.lock had no such output)")
        train.children.append(data)
        if source:
            upstream = self.find_upstream(source, run)
            data.children.append(
                self.stage(upstream) if upstream else Node(f"{source}: no run found before it")
            )
        return node

    def stage(self, run: Any, seen: frozenset[str] = frozenset()) -> Node:
        stage = run.data.tags.get("clipmill.stage", "?")
        if run.info.run_id in self.shown:
            return Node(f"{stage} run {run.info.run_id} (shown above)")
        self.shown.add(run.info.run_id)
        node = Node(_run_label(f"{stage} run", run), _summary(run))
        params = {k: v for k, v in run.data.params.items() if k.startswith(f"{stage}.")}
        if params:
            node.children.append(
                Node(
                    f"{stage} params ({len(params)})",
                    [f"{k.removeprefix(stage + '.')} = {v}" for k, v in sorted(params.items())],
                )
            )
        for feeder in FEEDS.get(stage, ()):
            if feeder in seen:
                continue
            upstream = self.find_upstream(feeder, run)
            if upstream is not None:
                node.children.append(self.stage(upstream, seen | {stage}))
        return node

    def find_upstream(self, stage: str, after: Any) -> Any | None:
        """The latest finished run of `stage` that ended before `after` started, preferring one
        under the same pipeline run."""
        runs = self.client.search_runs(
            self.experiment_ids,
            filter_string=f"tags.`clipmill.stage` = '{stage}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=200,
        )
        before = [r for r in runs if (r.info.end_time or 0) <= after.info.start_time]
        parent = after.data.tags.get("mlflow.parentRunId")
        same = [r for r in before if parent and r.data.tags.get("mlflow.parentRunId") == parent]
        return (same or before or [None])[0]

    def find_training(self, model_dir: str, evaluation: Any) -> Any | None:
        name = Path(model_dir).as_posix().rstrip("/")
        runs = self.client.search_runs(
            self.experiment_ids,
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1000,
        )
        candidates = [
            r
            for r in runs
            if _same_dir(r.data.tags.get("clipmill.model_dir", ""), name)
            and (r.info.end_time or 0) <= evaluation.info.start_time
        ]
        parent = evaluation.data.tags.get("mlflow.parentRunId")
        same = [r for r in candidates if parent and r.data.tags.get("mlflow.parentRunId") == parent]
        return (same or candidates or [None])[0]

    def _lock(self, md5: str) -> str:
        lock = self.root / "dvc.lock"
        if not lock.exists():
            return "no dvc.lock here to compare with"
        return "as in dvc.lock now" if md5 in lock.read_text() else "dvc.lock has since changed"


def _same_dir(tagged: str, wanted: str) -> bool:
    tagged = tagged.rstrip("/")
    return bool(tagged) and (tagged == wanted or tagged.endswith("/" + wanted.lstrip("./")))


def _json_list(params: dict[str, str], suffix: str) -> list[str]:
    for key, value in params.items():
        if key.endswith(suffix):
            try:
                items = json.loads(value)
            except json.JSONDecodeError:
                return [value]
            return [str(i) for i in items] if isinstance(items, list) else [str(items)]
    return []


def _run_label(kind: str, run: Any) -> str:
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(run.info.start_time / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")
    return f"{kind} {run.info.run_id} ({run.info.run_name}, {when} UTC, {run.info.status})"


def _summary(run: Any) -> list[str]:
    tags = run.data.tags
    out = []
    if "clipmill.git_commit" in tags:
        out.append(f"git {tags['clipmill.git_commit']}")
    if "clipmill.dvc_stage_hash" in tags:
        out.append(f"DVC stage fingerprint {tags['clipmill.dvc_stage_hash']}")
    if "clipmill.dvc_exp" in tags:
        out.append(f"DVC experiment {tags['clipmill.dvc_exp']}")
    if "mlflow.parentRunId" in tags:
        out.append(f"pipeline run {tags['mlflow.parentRunId']}")
    return out
