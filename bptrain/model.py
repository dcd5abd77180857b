"""A trained model rebuilt on the client from its weights file: `predict` without a server."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from worker.layout import ParamLayout
from worker.model import MLP


class Model:
    """An MLP from a bptrain .npz (W1, b1, ... plus its architecture), ready to predict."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        if "architecture" not in arrays:
            raise ValueError("these weights carry no architecture; was the file made by bptrain?")
        self.architecture = json.loads(str(arrays["architecture"]))
        sizes, activations = self.architecture["sizes"], self.architecture["activations"]
        self.mlp = MLP(sizes, activations, self.architecture["loss"])
        tensors = {name: array for name, array in arrays.items() if name != "architecture"}
        self.theta = ParamLayout(sizes).from_dict(tensors)  # (P,) float32

    @classmethod
    def load(cls, source: str | Path | bytes) -> Model:
        """From a path to an .npz file, or its bytes."""
        stream = io.BytesIO(source) if isinstance(source, bytes) else source
        with np.load(stream, allow_pickle=False) as archive:
            return cls({name: archive[name] for name in archive.files})

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The network's output for X (N, D): logits (N, C) or regression targets (N, K)."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.architecture["sizes"][0]:
            raise ValueError(
                f"X must be (N, {self.architecture['sizes'][0]}), got {tuple(X.shape)}"
            )
        return self.mlp.predict(self.theta, X)

    def predict_classes(self, X: np.ndarray) -> np.ndarray:
        """argmax of the logits: (N,) class labels."""
        return self.predict(X).argmax(axis=1)
