"""The losses as functions, each fused with its output gradient.

`f(out, y, [option], dout=None) -> (loss, dout)`: `loss` is the mean over the batch
(summed over output units) as a Python float; `dout` = ∂loss/∂out has the shape of the
network output, so backward starts from δ^L = dout ⊙ σ_L'(z^L). The 1/N of the mean lives
in `dout`; backward never divides by N again. `dout`, when given, is a preallocated buffer
the gradient is written into.

    softmax_cross_entropy             logits (N, C), y (N,) labels;  label_smoothing ε ∈ [0, 1)
    binary_cross_entropy_with_logits  logits (N, K), y (N, K) in [0, 1] (or (N,) when K = 1)
    mean_squared_error                ½ squared error, pred (N, K), y (N, K) (or (N,) when K = 1)
    huber                             pred (N, K), y (N, K);  huber_delta δ > 0

and the metrics `accuracy` (labels) and `binary_accuracy` (yes/no outputs).
`worker.losses` binds the options into `Loss` objects and registers them by name.
"""

from __future__ import annotations

import numpy as np

from worker.backend import Array, array_module_of, constant_row

# ------------------------------------------------------------------ checks


def _check_output(out: Array, what: str) -> None:
    if out.ndim != 2 or out.shape[0] == 0:
        raise ValueError(f"{what} must have shape (N, K) with N >= 1, got {tuple(out.shape)}")


# The unsigned dtype of each integer width, built once: parsing "u8" every step costs more
# than the reduction it feeds.
_UNSIGNED = {size: np.dtype(f"u{size}") for size in (1, 2, 4, 8)}


def _check_labels(y: Array, num_samples: int, num_classes: int) -> None:
    if y.shape != (num_samples,):
        raise ValueError(f"y must have shape ({num_samples},) of labels, got {tuple(y.shape)}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    # Viewed as unsigned, a negative label is huge: one reduction checks both ends.
    if int(y.view(_UNSIGNED[y.dtype.itemsize]).max()) >= num_classes:
        low, high = int(y.min()), int(y.max())
        raise ValueError(
            f"y holds labels in [{low}, {high}], expected labels in [0, {num_classes})"
        )


_ROW_STARTS: dict[tuple[str, int, int], Array] = {}


def _row_starts(xp: object, rows: int, columns: int) -> Array:
    """[0, C, 2C, ...] (N,): where each row starts in a flat (N, C) array (cached)."""
    key = (xp.__name__, rows, columns)
    starts = _ROW_STARTS.get(key)
    if starts is None:
        if len(_ROW_STARTS) > 64:
            _ROW_STARTS.clear()
        starts = _ROW_STARTS[key] = xp.arange(0, rows * columns, columns)
    return starts


_ONES_ROWS: dict[tuple, Array] = {}


def _ones_row(like: Array) -> Array:
    """`constant_row(like, 1.0)`, (C,), looked up by (array type, width, dtype): cheaper
    than its string key, which matters at the loss's size."""
    key = (type(like), like.shape[-1], like.dtype)
    row = _ONES_ROWS.get(key)
    if row is None:
        if len(_ONES_ROWS) > 64:
            _ONES_ROWS.clear()
        row = _ONES_ROWS[key] = constant_row(like, 1.0)
    return row


def _targets_like(pred: Array, y: Array) -> Array:
    """y as (N, K) in pred's dtype; (N,) is accepted when K == 1."""
    xp = array_module_of(pred)
    N, K = pred.shape
    y = xp.asarray(y)
    if K == 1 and y.shape == (N,):
        y = y.reshape(N, 1)
    if y.shape != pred.shape:
        raise ValueError(f"y must have shape {tuple(pred.shape)} like pred, got {tuple(y.shape)}")
    return y.astype(pred.dtype, copy=False)


def _gradient_buffer(like: Array, dout: Array | None) -> Array:
    if dout is None:
        return array_module_of(like).empty_like(like)
    if dout.shape != like.shape or dout.dtype != like.dtype:
        raise ValueError(
            f"dout must be {tuple(like.shape)} {like.dtype}, got {tuple(dout.shape)} {dout.dtype}"
        )
    return dout


# ------------------------------------------------------------------ the loss functions


def softmax_cross_entropy(
    logits: Array, y: Array, label_smoothing: float = 0.0, dout: Array | None = None
) -> tuple[float, Array]:
    """Softmax and cross-entropy in one step, with optional label smoothing ε.

    logits: (N, C) scores s; y: (N,) integer labels in [0, C).
    Targets q = (1 − ε)·onehot(y) + ε/C; p = softmax(s) row-wise;
    loss = −(1/N) Σ_n Σ_c q_nc log p_nc = (1/N) Σ_n [log Σ_c e^{s_nc} − Σ_c q_nc s_nc];
    dlogits = (p − q) / N, shape (N, C), each row summing to 0.
    Subtracting the row max first keeps exp from overflowing at any logit size.
    """
    _check_output(logits, "logits")
    xp = array_module_of(logits)
    N, C = logits.shape
    y = xp.asarray(y)
    _check_labels(y, N, C)
    grad = _gradient_buffer(logits, dout)
    row_max = xp.maximum.reduce(logits, axis=1, keepdims=True)  # (N, 1)
    shifted = xp.subtract(logits, row_max, out=grad)  # (N, C), each row's max is 0
    label_index = y + _row_starts(xp, N, C)  # (N,) flat positions of s_{n, y_n}
    flat = grad.reshape(-1)  # a view
    picked = flat[label_index]  # (N,) s_{n, y_n}, a copy
    smoothing_total = label_smoothing / C * float(shifted.sum()) if label_smoothing else 0.0
    exp_shifted = xp.exp(shifted, out=grad)  # (N, C), in (0, 1]
    sum_exp = xp.matmul(exp_shifted, _ones_row(grad))  # (N,) Σ_c e^{s_nc} ∈ [1, C]
    # −log p[n, y_n] = log Σ_c e^{s_nc} − s_{n, y_n}, the smoothing's share taken apart
    if label_smoothing:
        picked *= 1.0 - label_smoothing
    per_sample = xp.subtract(xp.log(sum_exp), picked, out=picked)  # (N,)
    loss = (float(per_sample.sum()) - smoothing_total) / N
    xp.divide(1.0 / N, sum_exp, out=sum_exp)
    grad *= sum_exp[:, None]  # p / N
    flat[label_index] -= (1.0 - label_smoothing) / N
    if label_smoothing:
        grad -= label_smoothing / (C * N)
    return loss, grad


def binary_cross_entropy_with_logits(
    logits: Array, y: Array, dout: Array | None = None
) -> tuple[float, Array]:
    """Sigmoid and binary cross-entropy in one step, for K independent yes/no outputs.

    logits: (N, K) scores z; y: (N, K) targets in [0, 1] ((N,) when K = 1).
    loss = (1/N) Σ_n Σ_k [max(z, 0) − z y + log(1 + e^{−|z|})]  (= −y log σ − (1 − y) log(1 − σ));
    dlogits = (σ(z) − y) / N. Both forms never overflow.
    """
    _check_output(logits, "logits")
    xp = array_module_of(logits)
    N = logits.shape[0]
    y = _targets_like(logits, y)
    grad = _gradient_buffer(logits, dout)
    tail = xp.exp(-xp.abs(logits))  # e^{−|z|} ∈ (0, 1]
    per_entry = xp.maximum(logits, 0) - logits * y + xp.log1p(tail)
    loss = float(per_entry.sum()) / N
    xp.exp(xp.minimum(logits, 0), out=grad)
    tail += 1.0
    grad /= tail  # σ(z) = e^{min(z, 0)} / (1 + e^{−|z|})
    grad -= y
    grad /= N
    return loss, grad


def mean_squared_error(pred: Array, y: Array, dout: Array | None = None) -> tuple[float, Array]:
    """Half squared error, summed over outputs, averaged over the batch.

    pred: (N, K); y: (N, K), or (N,) when K == 1.
    loss = (1/N) Σ_n Σ_k ½ (pred[n, k] − y[n, k])²;  dpred = (pred − y) / N, shape (N, K).
    The ½ makes the gradient the plain residual; y is cast to pred's dtype.
    """
    _check_output(pred, "pred")
    xp = array_module_of(pred)
    N = pred.shape[0]
    y = _targets_like(pred, y)
    residual = xp.subtract(pred, y, out=_gradient_buffer(pred, dout))  # (N, K)
    loss = 0.5 * float(xp.vdot(residual, residual)) / N
    residual /= N  # dpred
    return loss, residual


def huber(
    pred: Array, y: Array, huber_delta: float = 1.0, dout: Array | None = None
) -> tuple[float, Array]:
    """Huber loss with threshold δ, summed over outputs, averaged over the batch.

    With r = pred − y: ½ r² where |r| ≤ δ, δ(|r| − ½δ) elsewhere (MSE near 0, linear in
    the tails, so outliers pull with force δ at most); dpred = clip(r, −δ, δ) / N.
    """
    _check_output(pred, "pred")
    xp = array_module_of(pred)
    N = pred.shape[0]
    y = _targets_like(pred, y)
    delta = huber_delta
    residual = xp.subtract(pred, y, out=_gradient_buffer(pred, dout))  # (N, K)
    clipped = xp.clip(residual, -delta, delta)  # r inside [−δ, δ]
    # ½ r² for |r| ≤ δ, δ|r| − ½δ² beyond: both equal ½c² + δ(|r| − |c|), c = clip(r)
    excess = xp.abs(residual) - xp.abs(clipped)
    loss = float(0.5 * xp.vdot(clipped, clipped) + delta * excess.sum()) / N
    xp.divide(clipped, N, out=residual)
    return loss, residual


def accuracy(logits: Array, y: Array) -> float:
    """Fraction of rows whose largest logit is at the label. logits: (N, C); y: (N,)."""
    _check_output(logits, "logits")
    xp = array_module_of(logits)
    predicted = xp.argmax(logits, axis=1)  # (N,)
    return float(xp.mean(predicted == xp.asarray(y)))


def binary_accuracy(logits: Array, y: Array) -> float:
    """Fraction of entries whose sign (z > 0) matches the target (y > ½). logits: (N, K)."""
    _check_output(logits, "logits")
    xp = array_module_of(logits)
    return float(xp.mean((logits > 0) == (_targets_like(logits, y) > 0.5)))
