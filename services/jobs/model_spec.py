"""The model part of a job's spec: its layers, their limits, and how they fit the loss and data."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from services.errors import InvalidSpecError, quoted
from services.jobs.dataset_spec import DatasetSpec
from services.jobs.spec_checks import check_choice, check_range
from worker.activations import ACTIVATIONS

REGRESSION_LOSSES = ("mse", "huber", "binary_cross_entropy")
MAX_LAYERS = 64
MAX_UNITS = 65_536
MAX_PARAMETERS = 50_000_000


@dataclass(frozen=True, kw_only=True)
class LayerSpec:
    """One dense layer: z = a_prev W + b, a = activation(z); W is (in, units)."""

    units: int
    activation: str
    dropout: float = 0.0  # inverted dropout on this layer's output while training

    def __post_init__(self) -> None:
        check_range("units", self.units, 1, MAX_UNITS)
        check_choice("activation", self.activation, sorted(ACTIVATIONS))
        check_range("dropout", self.dropout, 0.0, 0.99)


def parameter_count(sizes: Sequence[int]) -> int:
    """Weights and biases of the layers [D, H1, ..., C] describe: Σ (fan_in + 1) fan_out."""
    return sum((fan_in + 1) * fan_out for fan_in, fan_out in itertools.pairwise(sizes))


def check_layers(layers: Sequence[LayerSpec], parameters: int) -> None:
    """Between 1 and MAX_LAYERS layers, with at most MAX_PARAMETERS `parameters` in all."""
    if not layers:
        raise InvalidSpecError("layers", "must hold at least one layer")
    if len(layers) > MAX_LAYERS:
        raise InvalidSpecError("layers", f"must hold at most {MAX_LAYERS} layers")
    if parameters > MAX_PARAMETERS:
        raise InvalidSpecError(
            "layers", f"give {parameters} parameters; the limit is {MAX_PARAMETERS}"
        )


def check_output_layer(layers: Sequence[LayerSpec], loss: str, dataset: DatasetSpec) -> None:
    """The last layer gives the dataset's outputs, in the form `loss` takes them."""
    last = f"layers[{len(layers) - 1}]"
    output = layers[-1]
    expected = dataset.output_width
    if output.units != expected:
        raise InvalidSpecError(
            f"{last}.units",
            f"must be {expected} (the outputs of {dataset.name}), got {output.units}",
        )
    _check_loss_fits(loss, dataset)
    if output.dropout:
        raise InvalidSpecError(f"{last}.dropout", "must be 0 on the output layer")
    if loss == "softmax_cross_entropy" and output.activation != "identity":
        raise InvalidSpecError(
            f"{last}.activation",
            "must be identity for softmax_cross_entropy (the layer gives logits; "
            f"softmax is fused into the loss), got {quoted(output.activation)}",
        )


def _check_loss_fits(loss: str, dataset: DatasetSpec) -> None:
    is_classification = dataset.is_classification
    if is_classification and loss != "softmax_cross_entropy":
        raise InvalidSpecError(
            "loss",
            f"must be softmax_cross_entropy for {dataset.name}, got {quoted(loss)}",
        )
    if not is_classification and loss not in REGRESSION_LOSSES:
        raise InvalidSpecError(
            "loss",
            f"must be one of {', '.join(REGRESSION_LOSSES)} for {dataset.name}, got {quoted(loss)}",
        )


def check_loss_options(loss: str, *, l2: float, label_smoothing: float, huber_delta: float) -> None:
    """The loss's options are in range and apply to `loss`."""
    check_range("l2", l2, 0.0, 1e6)
    check_range("label_smoothing", label_smoothing, 0.0, 0.99)
    if label_smoothing and loss != "softmax_cross_entropy":
        raise InvalidSpecError("label_smoothing", "applies only to softmax_cross_entropy")
    check_range("huber_delta", huber_delta, 1e-9, 1e9)
    if huber_delta != 1.0 and loss != "huber":
        raise InvalidSpecError("huber_delta", "applies only to the huber loss")
