"""The library's one error family: every failure to build or load a CLIP model is a ModelLoadError."""

from __future__ import annotations


class ModelLoadError(ValueError):
    """A model reference (folder, MLflow URI, random:<config>, architecture name) cannot be
    loaded or built; the message names the reference, so a stage's log says which input is wrong."""


class UnknownModelError(ModelLoadError):
    """The architecture name is neither an open_clip architecture nor a config in tasks/clip/configs;
    its own type because the message lists the closest valid names."""


class TowerWeightsError(ModelLoadError):
    """A pretrained tower's weights are missing or do not fit the tower's config; its own type
    because train checks tower sources before any worker starts."""
