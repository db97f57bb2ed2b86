"""DataComp-style scoreboard: each task's main metric and their unweighted mean, per model,
each score shown next to its chance level and a trivial baseline, so quality is shown, not assumed.

Reference levels, computed from the evaluated split itself:

| metric | chance | trivial baseline |
|---|---|---|
| acc1, lp_acc1 | 1 / classes | share of the test split's majority class (always answer it) |
| acc5, lp_acc5 | min(5, classes) / classes | share of the 5 most frequent classes |
| mean_per_class_recall | 1 / classes | 1 / classes present (a constant answer recalls one class) |
| R@k, text -> image (`image_retrieval_recall@k`) | k / images | expected R@k of a random ranking = k / images |
| R@k, image -> text (`text_retrieval_recall@k`) | k / captions | expected R@k of a random ranking with each image's own number of captions as positives (an image without captions always misses) |
| mean_recall@k | mean of both directions | mean of both directions |

Chance is the textbook "k over the candidates"; the trivial baseline is what a model that looks
at no image would score on this very split, so beating it is the bar a model has to clear.
Linear-probe rows (`lp_acc1`) are shown but stay out of the average, which is the DataComp mean
over the zero-shot main metrics.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.evaluate.datasets import CLASSIFICATION, RETRIEVAL, EvalSet

DEFAULT_MAIN = {CLASSIFICATION: "acc1", RETRIEVAL: "mean_recall@1"}
PROBE_TASK = "linear_probe"
PROBE_METRIC = "lp_acc1"
COLUMNS = (
    "model",
    "dataset",
    "task",
    "metric",
    "value",
    "chance",
    "trivial_baseline",
    "beats_trivial_baseline",
)


@dataclass(frozen=True)
class Row:
    model: str
    dataset: str
    task: str
    metric: str
    value: float
    chance: float = math.nan  # 1 / classes, k / candidates
    baseline: float = math.nan  # majority class; random ranking's expected recall
    in_mean: bool = True  # counted in the model's unweighted average

    @property
    def beats_baseline(self) -> bool:
        """Strictly above the trivial baseline (NaN on either side: no)."""
        return self.value > self.baseline


def main_metric(task: str, dataset: str, overrides: Mapping[str, str]) -> str:
    return overrides.get(dataset, DEFAULT_MAIN[task])


def main_value(metrics: Mapping[str, float], metric: str) -> float:
    """`mean_recall@k` is derived (both directions averaged); anything else is read as is."""
    if metric.startswith("mean_recall@"):
        k = metric.split("@", 1)[1]
        return (metrics[f"image_retrieval_recall@{k}"] + metrics[f"text_retrieval_recall@{k}"]) / 2
    if metric not in metrics:
        raise KeyError(f"scoreboard metric {metric!r} not among {sorted(metrics)}")
    return float(metrics[metric])


def classification_levels(
    labels: Sequence[int], n_classes: int, metric: str
) -> tuple[float, float]:
    """(chance, trivial baseline) of acc1 / acc5 / mean_per_class_recall on these test labels."""
    if not labels or n_classes < 1:
        raise ValueError(f"scoreboard: {metric} needs labels and classes")
    counts = sorted(Counter(labels).values(), reverse=True)
    if metric == "acc1":
        return 1 / n_classes, counts[0] / len(labels)
    if metric == "acc5":
        if n_classes < 5:  # top-5 is NaN below 5 classes, so are its references
            return math.nan, math.nan
        return 5 / n_classes, sum(counts[:5]) / len(labels)
    if metric == "mean_per_class_recall":
        return 1 / n_classes, 1 / len(counts)
    raise ValueError(f"scoreboard: no chance level known for classification metric {metric!r}")


def random_ranking_recall(positives: Sequence[int], candidates: int, k: int) -> float:
    """Expected recall@k of a uniformly random ranking: per query 1 - C(n - p, k) / C(n, k)."""
    k = min(k, candidates)
    total = 0.0
    for p in positives:
        miss = 1.0
        for j in range(k):  # C(n-p, k) / C(n, k) as a product, exact and cheap
            miss *= max(candidates - p - j, 0) / (candidates - j)
        total += 1.0 - miss
    return total / len(positives) if positives else math.nan


def retrieval_levels(captions: Sequence[Sequence[str]], metric: str) -> tuple[float, float]:
    """(chance, trivial baseline) of a recall@k metric over these images and their captions."""
    kind, _, k_text = metric.partition("@")
    if not k_text.isdigit():
        raise ValueError(f"scoreboard: no chance level known for retrieval metric {metric!r}")
    k = int(k_text)
    per_image = [len(c) for c in captions]
    images, texts = len(per_image), sum(per_image)
    if not images or not texts:
        raise ValueError(f"scoreboard: {metric} needs images with captions")
    to_image = (min(k, images) / images, random_ranking_recall([1] * texts, images, k))
    to_text = (min(k, texts) / texts, random_ranking_recall(per_image, texts, k))
    if kind == "image_retrieval_recall":  # text -> image, CLIP_benchmark's name
        return to_image
    if kind == "text_retrieval_recall":  # image -> text
        return to_text
    if kind == "mean_recall":
        return (to_image[0] + to_text[0]) / 2, (to_image[1] + to_text[1]) / 2
    raise ValueError(f"scoreboard: no chance level known for retrieval metric {metric!r}")


def reference_levels(s: EvalSet, metric: str) -> tuple[float, float]:
    """(chance, trivial baseline) of `metric` on set `s` (a probe's `lp_` metric as its base)."""
    base = metric.removeprefix("lp_")
    if s.task == CLASSIFICATION:
        return classification_levels(s.labels, len(s.classnames), base)
    return retrieval_levels(s.captions, base)


def make_row(
    model: str, s: EvalSet, task: str, metric: str, value: float, in_mean: bool = True
) -> Row:
    """A scoreboard row with its chance level and trivial baseline filled in from the set."""
    chance, baseline = reference_levels(s, metric)
    return Row(model, s.name, task, metric, value, chance, baseline, in_mean)


def means(rows: list[Row]) -> dict[str, float]:
    """Unweighted mean of the main metrics per model (NaN values and probe rows skipped)."""
    return {m: v[0] for m, v in _averages(rows).items()}


def _averages(rows: list[Row]) -> dict[str, tuple[float, float, float]]:
    """model -> (mean value, mean chance, mean trivial baseline) over its averaged rows."""
    out: dict[str, list[Row]] = {}
    for r in rows:
        if r.in_mean and not math.isnan(r.value):
            out.setdefault(r.model, []).append(r)
    return {
        m: (
            sum(r.value for r in rs) / len(rs),
            sum(r.chance for r in rs) / len(rs),
            sum(r.baseline for r in rs) / len(rs),
        )
        for m, rs in out.items()
    }


def _cells(r: Row) -> tuple[Any, ...]:
    return (r.model, r.dataset, r.task, r.metric, r.value, r.chance, r.baseline, r.beats_baseline)


def as_table(rows: list[Row]) -> dict[str, list[Any]]:
    """Columns for mlflow.log_table, with one `average` row per model."""
    table: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    averages = [
        Row(m, "average", "all", "unweighted mean", v, c, b)
        for m, (v, c, b) in _averages(rows).items()
    ]
    for r in [*rows, *averages]:
        for key, value in zip(COLUMNS, _cells(r), strict=True):
            table[key].append(value)
    return table


def attach(metrics: dict[str, Any], rows: list[Row]) -> None:
    """Each row's reference levels into the stage's metrics, next to the model's score:
    `metrics[model][dataset]["reference"][metric] = {value, chance, trivial_baseline, beats}`."""
    for r in rows:
        entry = metrics.setdefault(r.model, {}).setdefault(r.dataset, {})
        entry.setdefault("reference", {})[r.metric] = {
            "value": r.value,
            "chance": r.chance,
            "trivial_baseline": r.baseline,
            "beats_trivial_baseline": r.beats_baseline,
        }
    for model, (value, chance, baseline) in _averages(rows).items():
        metrics[model]["scoreboard_mean_chance"] = chance
        metrics[model]["scoreboard_mean_trivial_baseline"] = baseline
        metrics[model]["scoreboard_beats_trivial_baseline"] = value > baseline


def figure(rows: list[Row], model: str) -> Any:
    """Bars = the model's score per set and metric; a dot = chance, a tick = trivial baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in rows if r.model == model]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(mine) + 2), 4))
    xs = range(len(mine))
    colours = ["tab:green" if r.beats_baseline else "tab:red" for r in mine]
    ax.bar(xs, [r.value for r in mine], color=colours, label="model: green beats baseline, red not")
    ax.scatter(xs, [r.chance for r in mine], color="k", marker="o", zorder=3, label="chance")
    ax.scatter(
        xs, [r.baseline for r in mine], color="tab:orange", marker="_", s=400, zorder=3,
        label="trivial baseline",
    )  # fmt: skip
    ax.set_xticks(list(xs), [f"{r.dataset}\n{r.metric}" for r in mine], rotation=60, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title(f"{model}: score vs chance and trivial baseline")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def save_figures(rows: list[Row], out: Path) -> None:
    """plots/<model>/scoreboard.png for every model (and into the active MLflow run)."""
    from tasks.evaluate import plots

    for model in dict.fromkeys(r.model for r in rows):
        plots.save(figure(rows, model), out, f"{model}/scoreboard.png")


def log_table(rows: list[Row]) -> None:
    import mlflow

    if mlflow.active_run():
        mlflow.log_table(data=as_table(rows), artifact_file="scoreboard.json")
