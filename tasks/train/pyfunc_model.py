"""MLflow pyfunc for a trained CLIP (models from code): text or image embeddings from a model folder."""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class ClipPyfunc(PythonModel):
    """Input: a list of texts; output: their L2-normalised text embeddings."""

    def load_context(self, context: Any) -> None:
        from tasks.clip import load_clip

        self.model, self.preprocess, self.tokenizer = load_clip(context.artifacts["clip"])

    def predict(
        self, context: Any, model_input: list[str], params: dict[str, Any] | None = None
    ) -> Any:
        import torch

        texts = [str(t) for t in model_input]
        with torch.no_grad():
            return self.model.encode_text(self.tokenizer(texts), normalize=True).numpy()


mlflow.models.set_model(ClipPyfunc())
