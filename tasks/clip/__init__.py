"""The CLIP model library below every stage: architectures, pretrained towers, builders, `load_clip`.

Stages (train, curate, evaluate, and later recaption and merge) import it; it imports no stage.
Importing it is cheap: torch, open_clip and MLflow load inside the functions that need them.
"""

from tasks.clip.errors import ModelLoadError, TowerWeightsError, UnknownModelError
from tasks.clip.folder import CONFIG_FILE, WEIGHTS_FILE, read_folder_config
from tasks.clip.load import architecture_of, load_clip, local_folder
from tasks.clip.mlflow_uri import MLFLOW_SCHEMES, is_mlflow_uri
from tasks.clip.random_init import RANDOM_PREFIX, build_random, is_random_ref
from tasks.clip.zoo import (
    CONFIG_DIR,
    BuiltModel,
    build_model,
    known_models,
    make_tokenizer,
    make_transforms,
    model_config,
    register_repo_configs,
    runtime_config,
)

__all__ = [
    "CONFIG_DIR",
    "CONFIG_FILE",
    "MLFLOW_SCHEMES",
    "RANDOM_PREFIX",
    "WEIGHTS_FILE",
    "BuiltModel",
    "ModelLoadError",
    "TowerWeightsError",
    "UnknownModelError",
    "architecture_of",
    "build_model",
    "build_random",
    "is_mlflow_uri",
    "is_random_ref",
    "known_models",
    "load_clip",
    "local_folder",
    "make_tokenizer",
    "make_transforms",
    "model_config",
    "read_folder_config",
    "register_repo_configs",
    "runtime_config",
]
