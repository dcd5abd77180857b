"""Finite-difference checks of backward, in the style of CS231n's gradient_check.py.

A test tool, not a hot path: `numerical_gradient` loops over every entry of θ in Python
and evaluates the loss twice per entry, so keep the networks it checks small.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from worker.backend import Array, to_numpy
from worker.model import MLP


def numerical_gradient(
    f: Callable[[np.ndarray], float], theta: np.ndarray, h: float = 1e-5
) -> np.ndarray:
    """Central differences (f(θ + h·e_i) − f(θ − h·e_i)) / 2h for every entry i of θ.

    Works on a float64 copy of `theta` (any shape), which `f` receives perturbed in
    place; the caller's array is never changed. Returns an array shaped like `theta`.
    """
    work = np.array(to_numpy(theta), dtype=np.float64)  # a copy, also for float64 input
    flat = work.reshape(-1)  # a view of the copy
    grad = np.empty_like(flat)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + h
        f_plus = f(work)
        flat[i] = saved - h
        f_minus = f(work)
        flat[i] = saved
        grad[i] = (f_plus - f_minus) / (2 * h)
    return grad.reshape(work.shape)


def rel_error(a: Array, b: Array) -> float:
    """max over entries of |a − b| / max(1e-8, |a| + |b|)."""
    a = np.asarray(to_numpy(a), dtype=np.float64)
    b = np.asarray(to_numpy(b), dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def gradcheck(model: MLP, theta: Array, x: Array, y: Array, h: float = 1e-5) -> dict[str, float]:
    """Worst relative error of backward against central differences, per tensor.

    θ and x are cast to float64 first. Returns {"W1": ..., "b1": ..., ...}; values
    around 1e-7 or below mean backward agrees with the loss it differentiates.
    """
    theta64 = np.array(to_numpy(theta), dtype=np.float64)
    x64 = np.asarray(to_numpy(x), dtype=np.float64)
    y = to_numpy(y)
    _, analytic = model.loss_and_gradient(theta64, x64, y)
    numeric = numerical_gradient(lambda t: model.compute_loss(t, x64, y), theta64, h)
    analytic_tensors = model.layout.to_dict(analytic)
    numeric_tensors = model.layout.to_dict(numeric)
    return {
        name: rel_error(analytic_tensors[name], numeric_tensors[name]) for name in analytic_tensors
    }
