"""Losses fused with their output gradient: `loss_fn(out, y) -> (loss, dout)`.

`loss` is the mean over the batch as a Python float, `dout` = ∂loss/∂out with the shape of
the network output, so backward starts from δ^L = dout ⊙ σ_L'(z^L). The 1/N of the mean
lives in `dout`; backward never divides by the batch size again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from worker.backend import Array, array_module_of

Loss: TypeAlias = Callable[[Array, Array], tuple[float, Array]]


def _check_output(out: Array, what: str) -> None:
    if out.ndim != 2 or out.shape[0] == 0:
        raise ValueError(f"{what} must have shape (N, K) with N >= 1, got {tuple(out.shape)}")


def _check_labels(y: Array, num_samples: int, num_classes: int) -> None:
    if y.shape != (num_samples,):
        raise ValueError(f"y must have shape ({num_samples},) of labels, got {tuple(y.shape)}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"y holds labels in [{low}, {high}], expected labels in [0, {num_classes})"
        )


def softmax_cross_entropy(logits: Array, y: Array) -> tuple[float, Array]:
    """Softmax and cross-entropy in one step.

    logits: (N, C) scores; y: (N,) integer labels in [0, C).
    loss = −(1/N) Σ_n log p[n, y_n] with p = softmax(logits) row-wise;
    dlogits = (p − onehot(y)) / N, shape (N, C), each row summing to 0.
    Subtracting the row max first keeps exp from overflowing at any logit size.
    """
    _check_output(logits, "logits")
    xp = array_module_of(logits)
    N, C = logits.shape
    y = xp.asarray(y)
    _check_labels(y, N, C)
    rows = xp.arange(N)
    shifted = logits - logits.max(axis=1, keepdims=True)  # (N, C), each row's max is 0
    exp_shifted = xp.exp(shifted)  # (N, C), in (0, 1]
    sum_exp = exp_shifted.sum(axis=1, keepdims=True)  # (N, 1), in [1, C]
    # −log p[n, y_n] = log Σ_c e^{s_nc} − s_{n,y_n}
    loss = float(xp.mean(xp.log(sum_exp[:, 0]) - shifted[rows, y]))
    dlogits = exp_shifted / sum_exp  # p, (N, C)
    dlogits[rows, y] -= 1
    dlogits /= N
    return loss, dlogits


def mean_squared_error(pred: Array, y: Array) -> tuple[float, Array]:
    """Half squared error, summed over outputs, averaged over the batch.

    pred: (N, K); y: (N, K), or (N,) when K == 1.
    loss = (1/N) Σ_n Σ_k ½ (pred[n, k] − y[n, k])²;  dpred = (pred − y) / N, shape (N, K).
    The ½ makes the gradient the plain residual; y is cast to pred's dtype.
    """
    _check_output(pred, "pred")
    xp = array_module_of(pred)
    N, K = pred.shape
    y = xp.asarray(y)
    if K == 1 and y.shape == (N,):
        y = y.reshape(N, 1)
    if y.shape != pred.shape:
        raise ValueError(f"y must have shape {tuple(pred.shape)} like pred, got {tuple(y.shape)}")
    residual = pred - y.astype(pred.dtype, copy=False)  # (N, K)
    loss = 0.5 * float(xp.sum(residual * residual)) / N
    dpred = residual / N  # (N, K)
    return loss, dpred


def accuracy(logits: Array, y: Array) -> float:
    """Fraction of rows whose largest logit is at the label. logits: (N, C); y: (N,)."""
    _check_output(logits, "logits")
    xp = array_module_of(logits)
    predicted = xp.argmax(logits, axis=1)  # (N,)
    return float(xp.mean(predicted == xp.asarray(y)))


LOSSES: dict[str, Loss] = {
    "softmax_cross_entropy": softmax_cross_entropy,
    "mse": mean_squared_error,
}


def get_loss(name: str) -> Loss:
    """The loss registered as `name`; ValueError listing the known names otherwise."""
    loss = LOSSES.get(name) if isinstance(name, str) else None
    if loss is None:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(sorted(LOSSES))}")
    return loss
