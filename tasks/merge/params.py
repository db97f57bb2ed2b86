"""Typed parameters of the merge stage: inputs, which methods, one section per method, outputs."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, model_validator

from tasks.base import ParamsSection, StageParams

Method = Literal[
    "uniform_soup",
    "greedy_soup",
    "task_arithmetic",
    "ties",
    "wise_ft",
    "opcm",
    "continual_task_arithmetic",
    "running_average",
]
METHODS: tuple[Method, ...] = get_args(Method)


class MergeInputs(ParamsSection):
    """The base (theta0) and the fine-tuned models, by folder or MLflow registered-model URI."""

    # fmt: off
    base: str = "data/models/teacher"  # theta0: a model folder or models:/name/version
    models: list[str] = Field(default_factory=list)  # fine-tuned models of the base's architecture (folders or models:/ URIs), in arrival order
    continue_from: str = ""  # OPCM only: a merged OPCM model (folder or models:/ URI) to continue; `models` are the new arrivals; "" = start from the first model
    exclude: list[str] = Field(default_factory=list)  # fnmatch patterns of state-dict keys NOT merged (they keep the base's value); [] = every parameter of both towers
    # fmt: on


class DareParams(ParamsSection):
    """DARE before task arithmetic and TIES: drop task-vector entries, rescale the rest."""

    # fmt: off
    p: float = Field(default=0.0, ge=0.0, lt=1.0)  # drop probability; 0 = DARE off
    seed: int = 0  # mask seed (per model and key)
    # fmt: on


class TaskArithmeticParams(ParamsSection):
    """theta0 + lambda * sum of task vectors."""

    lam: float = 0.3  # lambda, scale of the summed task vectors


class TiesParams(ParamsSection):
    """TIES: trim, elect sign, disjoint merge."""

    # fmt: off
    top_k: float = Field(default=0.2, gt=0.0, le=1.0)  # fraction of each task vector's |tau| kept (global over the task)
    merge: Literal["mean", "sum"] = "mean"  # disjoint mean or sum of the values agreeing with the elected sign
    lam: float = 1.0  # lambda, scale of the merged task vector
    # fmt: on


class WiseFtParams(ParamsSection):
    """WiSE-FT between the base and one fine-tuned model."""

    # fmt: off
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)  # weight of the fine-tuned model
    model: int = Field(default=0, ge=0)  # index into inputs.models of the fine-tuned model
    # fmt: on


class OpcmParams(ParamsSection):
    """OPCM and the continual baselines: arrival order, projection threshold."""

    # fmt: off
    alpha: float = Field(default=0.5, gt=0.0, lt=1.0)  # singular-value share kept out of the update's top-left block
    order: list[int] = Field(default_factory=list)  # arrival order as indices into inputs.models; [] = shuffled with seed
    seed: int = 0  # seed of the first shuffled order
    orders: int = Field(default=1, ge=1, le=100)  # shuffled orders merged (seeds seed..seed+orders-1): mean and spread over orders; 1 with `order` given
    continual_lam: float = 0.3  # lambda of continual task arithmetic (theta += lambda * tau_t)
    # fmt: on


class HeldoutParams(ParamsSection):
    """Zero-shot top-1 on the tasks' held-out splits: greedy soup's score and the comparison plot."""

    # fmt: off
    eval_root: str = "data/sample/suite"  # CLIP_benchmark-layout sets (classnames, templates, <split>/*.tar): the task suite
    sets: list[str] = Field(default_factory=lambda: ["fashion_mnist", "emoji_groups", "tuxpaint_categories", "openclipart_categories"])  # classification sets scored (mean top-1)
    split: str = "val"  # held-out split scored: never the eval `test` split
    max_items: int = Field(default=200, ge=1)  # images per set scored (first in key order)
    batch_size: int = Field(default=64, ge=1)  # images per forward pass
    feature_store: bool = True  # read/add the sets' frozen-tower features in the feature store evaluate uses (data/features or $CLIPMILL_FEATURE_STORE; a pure cache, same scores); False = in memory only
    report: bool = True  # score base, experts and every merged model per set; log the comparison plot
    expert_sets: list[str] = Field(default_factory=list)  # the set each of inputs.models was fine-tuned for (same order; [] = unknown)
    # fmt: on


class MergeOutputs(ParamsSection):
    """Where merged models go and how they are registered."""

    # fmt: off
    out_dir: str = "data/merge"  # one model folder per method (and per OPCM order) below it
    registered_model_prefix: str = "clipmill-merged"  # MLflow registered name = <prefix>-<method>; "" = do not register
    checkpoint_pt: bool = False  # also write open_clip's checkpoint.pt (the weights a second time; model.safetensors already loads everywhere)
    # fmt: on


class MergeParams(StageParams):
    """Everything that decides what a merge computes; WHERE it runs comes from settings."""

    # fmt: off
    methods: list[Method] = Field(default_factory=lambda: list(METHODS))  # methods run, each writing its own model folder
    inputs: MergeInputs = MergeInputs()  # base and fine-tuned models
    dare: DareParams = DareParams()  # DARE before task arithmetic / TIES
    task_arithmetic: TaskArithmeticParams = TaskArithmeticParams()  # task arithmetic
    ties: TiesParams = TiesParams()  # TIES-merging
    wise_ft: WiseFtParams = WiseFtParams()  # WiSE-FT
    opcm: OpcmParams = OpcmParams()  # OPCM and the continual baselines
    heldout: HeldoutParams = HeldoutParams()  # held-out scoring (greedy soup, comparison report)
    outputs: MergeOutputs = MergeOutputs()  # model folders and registration
    # fmt: on

    @model_validator(mode="after")
    def _check(self) -> MergeParams:
        n = len(self.inputs.models)
        if not self.methods:
            raise ValueError("methods: name at least one method")
        if n and self.wise_ft.model >= n and "wise_ft" in self.methods:
            raise ValueError(
                f"wise_ft.model {self.wise_ft.model}: only {n} models in inputs.models"
            )
        if self.opcm.order and sorted(self.opcm.order) != list(range(n)):
            raise ValueError(
                f"opcm.order {self.opcm.order}: must be a permutation of 0..{n - 1} (inputs.models)"
            )
        if self.inputs.continue_from and (self.methods != ["opcm"] or self.opcm.orders != 1):
            raise ValueError(
                f"inputs.continue_from {self.inputs.continue_from!r}: only method opcm continues "
                f"a merged model, in one order (methods: {self.methods}, opcm.orders {self.opcm.orders})"
            )
        if self.heldout.expert_sets and len(self.heldout.expert_sets) != n:
            raise ValueError(
                f"heldout.expert_sets: {len(self.heldout.expert_sets)} sets for {n} models"
            )
        return self

    def needs_ray(self) -> bool:
        """Merging streams tensors in one process: no Ray to start."""
        return False
