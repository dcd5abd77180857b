"""Losses fused with their output gradient: `loss(out, y, dout=None) -> (loss, dout)`.

`loss` is the mean over the batch (summed over output units) as a Python float; `dout` =
∂loss/∂out has the shape of the network output, so backward starts from δ^L = dout ⊙
σ_L'(z^L). The 1/N of the mean lives in `dout`; backward never divides by N again.
`dout`, when given, is a preallocated buffer the gradient is written into.

Registered losses (`get_loss(name, **options)`):

    softmax_cross_entropy   logits (N, C), y (N,) labels;  option label_smoothing ε ∈ [0, 1)
    binary_cross_entropy    logits (N, K), y (N, K) in [0, 1] (or (N,) when K = 1)
    mse                     ½ squared error, pred (N, K), y (N, K) (or (N,) when K = 1)
    huber                   pred (N, K), y (N, K);  option huber_delta δ > 0

The functions themselves (and the accuracy metrics) live in `worker.loss_functions`; they
are imported here too, so `from worker.losses import softmax_cross_entropy` keeps working.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

from worker.backend import Array
from worker.loss_functions import (
    accuracy,
    binary_accuracy,
    binary_cross_entropy_with_logits,
    huber,
    mean_squared_error,
    softmax_cross_entropy,
)


class Loss(ABC):
    """A loss with its options bound: `loss(out, y, dout=None) -> (loss, dout)`."""

    name: str
    is_classification: bool = False

    @abstractmethod
    def __call__(self, out: Array, y: Array, dout: Array | None = None) -> tuple[float, Array]:
        """(batch-mean loss, ∂loss/∂out) for network output `out` (N, K) and targets `y`."""

    def metrics(self, out: Array, y: Array) -> dict[str, float]:
        """Extra evaluation metrics beyond the loss (accuracy for classifiers)."""
        return {}

    def check_output_width(self, width: int) -> None:  # noqa: B027 (most losses take any)
        """ValueError when the network's output width cannot feed this loss."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SoftmaxCrossEntropy(Loss):
    name = "softmax_cross_entropy"
    is_classification = True

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not (isinstance(label_smoothing, int | float) and 0.0 <= label_smoothing < 1.0):
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def __call__(self, out: Array, y: Array, dout: Array | None = None) -> tuple[float, Array]:
        return softmax_cross_entropy(out, y, self.label_smoothing, dout)

    def metrics(self, out: Array, y: Array) -> dict[str, float]:
        return {"accuracy": accuracy(out, y)}

    def check_output_width(self, width: int) -> None:
        if width < 2:
            raise ValueError(
                f"softmax_cross_entropy needs at least 2 output classes, got sizes[-1] = {width}"
            )

    def __repr__(self) -> str:
        return f"SoftmaxCrossEntropy(label_smoothing={self.label_smoothing})"


class BinaryCrossEntropy(Loss):
    name = "binary_cross_entropy"
    is_classification = True

    def __call__(self, out: Array, y: Array, dout: Array | None = None) -> tuple[float, Array]:
        return binary_cross_entropy_with_logits(out, y, dout)

    def metrics(self, out: Array, y: Array) -> dict[str, float]:
        return {"accuracy": binary_accuracy(out, y)}


class MeanSquaredError(Loss):
    name = "mse"

    def __call__(self, out: Array, y: Array, dout: Array | None = None) -> tuple[float, Array]:
        return mean_squared_error(out, y, dout)


class Huber(Loss):
    name = "huber"

    def __init__(self, huber_delta: float = 1.0) -> None:
        if not (
            isinstance(huber_delta, int | float) and math.isfinite(huber_delta) and huber_delta > 0
        ):
            raise ValueError(f"huber_delta must be a finite number > 0, got {huber_delta!r}")
        self.huber_delta = float(huber_delta)

    def __call__(self, out: Array, y: Array, dout: Array | None = None) -> tuple[float, Array]:
        return huber(out, y, self.huber_delta, dout)

    def __repr__(self) -> str:
        return f"Huber(huber_delta={self.huber_delta})"


LOSSES: dict[str, type[Loss]] = {
    loss.name: loss for loss in (SoftmaxCrossEntropy, BinaryCrossEntropy, MeanSquaredError, Huber)
}

# Which keyword options each loss takes (the others must stay at their defaults).
LOSS_OPTIONS: dict[str, tuple[str, ...]] = {
    "softmax_cross_entropy": ("label_smoothing",),
    "binary_cross_entropy": (),
    "mse": (),
    "huber": ("huber_delta",),
}


def get_loss(name: str, *, label_smoothing: float = 0.0, huber_delta: float = 1.0) -> Loss:
    """The loss registered as `name` with its options bound.

    label_smoothing applies to softmax_cross_entropy only and huber_delta to huber only;
    setting either for another loss is a ValueError, as is an unknown name.
    """
    cls = LOSSES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(sorted(LOSSES))}")
    given = {"label_smoothing": (label_smoothing, 0.0), "huber_delta": (huber_delta, 1.0)}
    options = {}
    for option, (value, default) in given.items():
        if option in LOSS_OPTIONS[name]:
            options[option] = value
        elif value != default:
            raise ValueError(f"{option} applies only to {_owner(option)}, not to {name}")
    return cls(**options)


def _owner(option: str) -> str:
    return next(name for name, options in LOSS_OPTIONS.items() if option in options)
