"""Merging as models arrive: a Prefect flow that merges every newly registered expert into the
current OPCM model (the sequential setting OPCM was made for), registers the new version and
evaluates it.

"Arrived" = a version of a registered model whose name starts with `expert_prefix` (the expert
params files register `clipmill-expert-<task>`) that the latest version of the online OPCM model
(`<merged_prefix>-opcm`) does not list in its lineage (`clipmill.merge_models` tag). The
deployment polls on a schedule (prefect.yaml `merge-on-arrival`, every 15 minutes): a run with
nothing new costs one registry query. New versions are merged oldest first, in ONE merge-stage run
through the runner (`inputs.continue_from` = the latest online model, so lambda, the norms and
the order carry on), then the evaluate stage scores the new model on the suite's tasks
(params/evaluate_merge.yaml, results under `<out_dir>/evaluate`); its run id, scoreboard mean
and per-set top-1 become tags (`clipmill.evaluate.*`) of the new registered version.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from tasks.settings import get_settings
from tasks.tracking import configure_mlflow


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    configure_mlflow()  # the configured store, its experiment created
    return MlflowClient(get_settings().tracking_uri)


def latest_online(merged_name: str) -> tuple[str | None, list[str]]:
    """(models:/ URI of the latest online OPCM version or None, the models it already holds)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = _client().search_model_versions(f"name = '{merged_name}'")
    except MlflowException:
        return None, []
    if not versions:
        return None, []
    latest = max(versions, key=lambda v: int(v.version))
    merged = json.loads(latest.tags.get("clipmill.merge_models", "[]"))
    return f"models:/{merged_name}/{latest.version}", merged


def new_arrivals(expert_prefix: str, already: list[str]) -> list[str]:
    """models:/ URIs of expert versions not merged yet, oldest registration first."""
    client = _client()
    found = []
    for model in client.search_registered_models(f"name LIKE '{expert_prefix}%'"):
        for v in client.search_model_versions(f"name = '{model.name}'"):
            uri = f"models:/{model.name}/{v.version}"
            if uri not in already:
                found.append((int(v.creation_timestamp), uri))
    return [uri for _, uri in sorted(found)]


def merge_arrivals(
    arrivals: list[str], continue_from: str | None, out_dir: str, merged_prefix: str
) -> dict[str, Any]:
    """One merge-stage run (the runner: MLflow run, metrics): OPCM of the arrivals, continued."""
    import tasks.runner

    overrides = {
        "methods": ["opcm"],
        "inputs.models": arrivals,
        "inputs.continue_from": continue_from or "",
        "opcm.order": list(range(len(arrivals))),
        "opcm.orders": 1,
        "heldout.report": False,
        "heldout.expert_sets": [],
        "outputs.out_dir": out_dir,
        "outputs.registered_model_prefix": merged_prefix,
    }
    return tasks.runner.run_stage("merge", overrides=overrides, door="prefect")


def evaluate_model(folder: str, out_dir: str) -> dict[str, Any]:
    """The evaluate stage (suite params) on the new model only."""
    import tasks.runner

    overrides = {"models": [folder], "output_dir": out_dir}
    return tasks.runner.run_stage("evaluate_merge", overrides=overrides, door="prefect")


def attach_evaluation(merged_name: str, version: str, label: str, metrics: dict[str, Any]) -> dict:
    """The new version's scores (the evaluate run's id, its scoreboard mean and each set's top-1)
    as tags of that model version, so the registry shows how every online version scores and
    which run holds the details."""
    model = metrics.get(label, {})
    scores: dict[str, Any] = {"run_id": metrics.get("_mlflow_run_id", "")}
    if "scoreboard_mean" in model:
        scores["scoreboard_mean"] = model["scoreboard_mean"]
    for name, value in model.items():
        if isinstance(value, dict) and "acc1" in value:
            scores[f"{name}.acc1"] = value["acc1"]
    client = _client()
    for key, value in scores.items():
        client.set_model_version_tag(merged_name, version, f"clipmill.evaluate.{key}", str(value))
    return scores


def merge_new_experts(
    expert_prefix: str, merged_prefix: str, out_dir: str, evaluate: bool
) -> dict[str, Any]:
    """The flow's work as a plain function (what the tests call): poll, merge, evaluate."""
    merged_name = f"{merged_prefix}-opcm"
    current, held = latest_online(merged_name)
    arrivals = new_arrivals(expert_prefix, held)
    if not arrivals:
        return {"arrivals": [], "registered": current}
    metrics = merge_arrivals(arrivals, current, out_dir, merged_prefix)
    version = metrics.get("opcm.registered_version")
    result: dict[str, Any] = {
        "arrivals": arrivals,
        "continued_from": current,
        "registered": f"models:/{merged_name}/{version}" if version else None,
        "merge_seconds": metrics.get("opcm.seconds"),
    }
    if evaluate:
        folder = Path(out_dir) / "opcm"
        scores = evaluate_model(str(folder), str(Path(out_dir) / "evaluate"))
        result["evaluate"] = (
            attach_evaluation(merged_name, str(version), folder.name, scores) if version else {}
        )
    return result


@task(name="merge-new-experts", retries=0)
def merge_task(
    expert_prefix: str, merged_prefix: str, out_dir: str, evaluate: bool
) -> dict[str, Any]:
    return merge_new_experts(expert_prefix, merged_prefix, out_dir, evaluate)


@flow(name="clipmill-merge-on-arrival", log_prints=True)
def merge_on_arrival(
    expert_prefix: str = "clipmill-expert-",
    merged_prefix: str = "clipmill-online",
    out_dir: str = "data/merge_online",
    evaluate: bool = True,
    pull: bool = False,
    push: bool = False,
) -> dict[str, Any]:
    """Merge every expert version registered since the last run into the online OPCM model.

    `pull` fetches the base model and the suite's sets from the DVC remote first (a fresh
    worker); `push` is accepted like every deployment's, but there is nothing to push: the online
    model's versions live in the MLflow registry, not in DVC."""
    logger = get_run_logger()
    if pull:
        from flows.pipeline import pull_inputs

        pull_inputs(["merge"])
    result = merge_task(expert_prefix, merged_prefix, out_dir, evaluate)
    if result["arrivals"]:
        logger.info("merged %s into %s", result["arrivals"], result["registered"])
    else:
        logger.info("no new expert since %s", result["registered"])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--expert-prefix", default="clipmill-expert-")
    parser.add_argument("--merged-prefix", default="clipmill-online")
    parser.add_argument("--out-dir", default="data/merge_online")
    parser.add_argument("--no-evaluate", action="store_true")
    args = parser.parse_args(argv)
    get_settings()
    print(
        json.dumps(
            merge_on_arrival(
                args.expert_prefix, args.merged_prefix, args.out_dir, not args.no_evaluate
            ),
            indent=1,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
