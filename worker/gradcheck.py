"""Finite-difference checks of backward, in the style of CS231n's gradient_check.py.

`numerical_gradient` differentiates any f(θ) by central differences; `gradcheck` compares
a model's float64 backward with the seven-point stencil of the textbook loss
(`worker.reference`), evaluated in extended precision so the reference's own rounding
(~1e-19·|f|/h) stays far below the errors it looks for; `check_architecture` is the
service's entry point: it builds a small random problem for an architecture and reports
the worst relative error per layer.

Not a hot path: the numerical gradient evaluates the loss 2 to 6 times per checked
entry of θ, in a Python loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from worker import reference
from worker.backend import Array, to_numpy
from worker.configs import ModelConfig
from worker.model import MLP

# The numerical side runs in extended precision where the platform has it (x86: 64-bit
# significand, ε ≈ 1e-19; elsewhere longdouble is float64). The seven-point stencil's
# truncation (~h⁶f⁽⁷⁾/140) is negligible at h = 1e-3, and its rounding, ~ε·|f|/h, is
# about 1e-16·|f|: entries |g| ≥ 1e-8 are resolved to 1e-8·|f| relative, smaller ones
# to ~1e-16·|f| absolute (the 1e-8 floor of `rel_error`). The step moves z by up to
# 3h·|a|, so a check must keep every z that far from a kink.
REFERENCE_DTYPE = np.longdouble
STENCIL_STEP = 1e-3
STENCIL_ORDER = 6
# What `check_architecture` calls a pass: backward agrees with the loss it differentiates.
TOLERANCE = 1e-7


def numerical_gradient(
    f: Callable[[np.ndarray], float],
    theta: np.ndarray,
    h: float = 1e-5,
    *,
    order: int = 2,
    indices: np.ndarray | None = None,
    dtype: type = np.float64,
) -> np.ndarray:
    """Finite-difference ∂f/∂θ_i for every entry i of θ (or only `indices` of the flat θ).

    order 2: (f(θ + h e_i) − f(θ − h e_i)) / 2h;
    order 4: (8 [f(θ + h e_i) − f(θ − h e_i)] − [f(θ + 2h e_i) − f(θ − 2h e_i)]) / 12h;
    order 6: (45 [f(±h)] − 9 [f(±2h)] + [f(±3h)]) / 60h, [f(±kh)] = f(θ + kh e_i) − f(θ − kh e_i).
    Works on a copy of `theta` in `dtype` (float64, or longdouble for extended
    precision), which `f` receives perturbed in place; the caller's array is never
    changed. Returns a float64 array shaped like `theta` (0 at entries not in `indices`).
    """
    # ∂f/∂θ_i ≈ Σ_k w_k (f(θ + k h e_i) − f(θ − k h e_i)) / h: differences of nearby values
    # first, so a loss that does not depend on θ_i gives exactly 0.
    if order == 2:
        terms = ((1.0, 0.5),)
    elif order == 4:
        terms = ((1.0, 8.0 / 12.0), (2.0, -1.0 / 12.0))
    elif order == 6:
        terms = ((1.0, 45.0 / 60.0), (2.0, -9.0 / 60.0), (3.0, 1.0 / 60.0))
    else:
        raise ValueError(f"order must be 2, 4 or 6, got {order}")
    work = np.array(to_numpy(theta), dtype=dtype)  # a copy, also for input of that dtype
    flat = work.reshape(-1)  # a view of the copy
    grad = np.zeros(flat.shape, dtype=np.float64)
    for i in range(flat.size) if indices is None else indices:
        saved = flat[i]
        total = 0.0
        for step, weight in terms:
            flat[i] = saved + step * h
            f_plus = f(work)
            flat[i] = saved - step * h
            f_minus = f(work)
            total += weight * (f_plus - f_minus)
        flat[i] = saved
        grad[i] = total / h
    return grad.reshape(work.shape)


ZERO_NOISE = 1e-10  # what finite differences give for a gradient that is exactly zero


def rel_error(a: Array, b: Array) -> float:
    """max over entries of |a − b| / max(1e-8, |a| + |b|).

    An entry where `a` (the analytic gradient) is exactly zero, as for a unit dropout
    switched off, matches any |b| ≤ ZERO_NOISE: finite differences cannot give an exact
    zero, and their rounding noise there is far above 1e-8 × the tolerance.
    """
    a = np.asarray(to_numpy(a), dtype=np.float64)
    b = np.asarray(to_numpy(b), dtype=np.float64)
    if a.size == 0:
        return 0.0
    errors = np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))
    errors[(a == 0) & (np.abs(b) <= ZERO_NOISE)] = 0.0
    return float(np.max(errors))


def gradcheck(
    model: MLP,
    theta: Array,
    x: Array,
    y: Array,
    h: float = STENCIL_STEP,
    *,
    dropout_masks: Sequence[Array | None] | None = None,
    indices: np.ndarray | None = None,
) -> dict[str, float]:
    """Worst relative error of the float64 backward against the numerical gradient, per tensor.

    The analytic side is `model.loss_and_gradient` on float64 copies of θ and x; the
    numerical side is the seven-point stencil of `reference.loss_value` (the same loss
    written by its definition) in extended precision. Dropout masks, when given, are
    fixed for both, so the loss is a deterministic function of θ. `indices` restricts
    the check to those entries of the flat θ. Returns {"W1": ..., "b1": ..., ...}.
    """
    theta64 = np.array(to_numpy(theta), dtype=np.float64)
    x64 = np.asarray(to_numpy(x), dtype=np.float64)
    y = to_numpy(y)
    masks = None
    if dropout_masks is not None:
        masks = [None if m is None else np.asarray(to_numpy(m), np.float64) for m in dropout_masks]
    _, analytic = model.loss_and_gradient(theta64, x64, y, dropout_masks=masks)
    analytic = analytic.copy()  # the model's buffers are reused below

    x_wide = x64.astype(REFERENCE_DTYPE)

    def loss_at(t: np.ndarray) -> np.ndarray:
        return reference.loss_value(model, t, x_wide, y, masks)

    numeric = numerical_gradient(
        loss_at, theta64, h, order=STENCIL_ORDER, indices=indices, dtype=REFERENCE_DTYPE
    )
    checked = np.zeros(theta64.size)
    checked[slice(None) if indices is None else indices] = 1.0
    analytic_tensors = model.layout.to_dict(analytic)
    numeric_tensors = model.layout.to_dict(numeric)
    checked_tensors = model.layout.to_dict(checked)
    errors = {}
    for name in model.layout.shapes():
        keep = checked_tensors[name] > 0
        errors[name] = rel_error(analytic_tensors[name][keep], numeric_tensors[name][keep])
    return errors


@dataclass(frozen=True)
class GradcheckReport:
    """Result of `check_architecture`.

    layer_errors: worst relative error over W^l and b^l, for l = 1..L.
    tensor_errors: the same per tensor ({"W1": ..., "b1": ...}).
    checked_entries: how many entries of θ were differentiated numerically.
    """

    layer_errors: tuple[float, ...]
    tensor_errors: dict[str, float]
    checked_entries: int
    tolerance: float = TOLERANCE

    @property
    def worst_error(self) -> float:
        return max(self.layer_errors)

    @property
    def is_passed(self) -> bool:
        return self.worst_error <= self.tolerance


def random_targets(loss: str, rng: np.random.Generator, batch: int, outputs: int) -> np.ndarray:
    """Random targets a loss accepts: labels, 0/1 targets or real values."""
    if loss == "softmax_cross_entropy":
        return rng.integers(0, outputs, size=batch)  # (N,) labels
    if loss == "binary_cross_entropy":
        return rng.integers(0, 2, size=(batch, outputs)).astype(np.float64)  # (N, K) in {0, 1}
    return rng.standard_normal((batch, outputs))  # (N, K) regression targets


def check_architecture(
    config: ModelConfig,
    *,
    batch: int = 4,
    seed: int = 0,
    init: str | Sequence[str] = "auto",
    entries_per_tensor: int | None = 16,
) -> GradcheckReport:
    """Check backward for the model `config` describes on a small random float64 problem.

    Builds the model as the service would (`MLP.from_config`), a seeded θ (its biases
    moved off 0), a (batch, D) standard-normal input, random targets and, with dropout,
    one fixed set of masks. Of every tensor, `entries_per_tensor` random entries (all
    when None) are differentiated with the seven-point stencil and compared with
    backward. Among 8 seeds it uses the one whose pre-activations stay farthest from 0,
    where relu-like σ' jumps (a stencil across a kink measures the jump, not backward).
    """
    model = MLP.from_config(config)
    activations, loss = config.activations, config.loss
    best = None
    for attempt in range(8):
        rng = np.random.default_rng([seed, attempt])
        theta = model.layout.init_theta(activations, seed + attempt, np.float64, init=init)
        theta += 0.1 * rng.standard_normal(theta.shape)  # biases off 0, weights nudged
        x = rng.standard_normal((batch, model.sizes[0]))
        zs = (z for z, _ in model.layer_outputs(theta, x, keep_z=True))
        margin = min(float(np.abs(z).min()) for z in zs)
        if best is None or margin > best[0]:
            best = (margin, rng, theta, x)
    _, rng, theta, x = best
    y = random_targets(loss, rng, batch, model.sizes[-1])
    masks = model.draw_dropout_masks(rng, batch, np.float64) if model.has_dropout else None
    indices = _sample_entries(model, rng, entries_per_tensor)
    errors = gradcheck(model, theta, x, y, dropout_masks=masks, indices=indices)
    layers = tuple(
        max(errors[f"W{layer}"], errors[f"b{layer}"])
        for layer in range(1, model.layout.num_layers + 1)
    )
    checked = model.layout.size if indices is None else len(indices)
    return GradcheckReport(layer_errors=layers, tensor_errors=errors, checked_entries=checked)


def _sample_entries(
    model: MLP, rng: np.random.Generator, per_tensor: int | None
) -> np.ndarray | None:
    """Flat indices of up to `per_tensor` random entries of every W^l and b^l."""
    if per_tensor is None:
        return None
    position = np.arange(model.layout.size)
    chosen = []
    for W, b in model.layout.views(position):
        for tensor in (W.reshape(-1), b):
            count = min(per_tensor, tensor.size)
            chosen.append(rng.choice(tensor, size=count, replace=False))
    return np.sort(np.concatenate(chosen))
