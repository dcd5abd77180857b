"""A multi-layer perceptron over a flat θ: forward caches, backward is the chain rule.

For layers l = 1..L, with a^0 = x:

    z^l = a^{l-1} W^l + b^l          # (N, out)
    a^l = σ_l(z^l)

and backward, from δ^L = dout ⊙ σ_L'(z^L) (dout from the fused loss):

    ∂loss/∂W^l = a^{l-1}ᵀ δ^l        # (in, out)
    ∂loss/∂b^l = Σ_rows δ^l          # (out,)
    δ^{l-1}    = (δ^l W^lᵀ) ⊙ σ_{l-1}'(z^{l-1})

Every step is a matrix product over the whole batch. The model holds no weights: θ is
passed in, gradients come out, and updating θ is the parameter server's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worker.activations import Activation, get_activation
from worker.backend import Array, array_module_of
from worker.layout import ParamLayout
from worker.losses import Loss, accuracy, get_loss


@dataclass(frozen=True)
class ForwardCache:
    """What backward needs from forward.

    a: [a^0, ..., a^L], a^0 = x, each (N, sizes[l]).
    z: [z^1, ..., z^L], so z[l - 1] is z^l, each (N, sizes[l]).
    """

    a: list[Array]
    z: list[Array]


class MLP:
    """Dense layers with per-layer activations and a fused loss, all over a flat θ."""

    def __init__(self, sizes: Sequence[int], activations: Sequence[str], loss: str) -> None:
        """sizes = [D, H1, ..., C]; activations[l-1] is layer l's σ; loss names the loss.

        For "softmax_cross_entropy" the output layer is usually "identity" (its outputs
        are the logits); with "mse" any output activation works. Raises ValueError naming
        the bad argument.
        """
        self.layout = ParamLayout(sizes)
        activation_names = list(activations)
        if len(activation_names) != self.layout.num_layers:
            raise ValueError(
                f"expected {self.layout.num_layers} activations (one per layer) for sizes "
                f"{list(self.layout.sizes)}, got {len(activation_names)}"
            )
        self.activations: list[Activation] = [get_activation(n) for n in activation_names]
        self.loss_fn: Loss = get_loss(loss)
        if loss == "softmax_cross_entropy" and self.layout.sizes[-1] < 2:
            raise ValueError(
                "softmax_cross_entropy needs at least 2 output classes, "
                f"got sizes[-1] = {self.layout.sizes[-1]}"
            )
        self.activation_names = activation_names
        self.loss_name = loss

    def __repr__(self) -> str:
        return (
            f"MLP(sizes={list(self.layout.sizes)}, activations={self.activation_names}, "
            f"loss={self.loss_name!r})"
        )

    @property
    def sizes(self) -> tuple[int, ...]:
        """Layer widths [D, H1, ..., C]."""
        return self.layout.sizes

    def _check_input(self, theta: Array, x: Array) -> Array:
        D = self.layout.sizes[0]
        if x.ndim != 2 or x.shape[1] != D:
            raise ValueError(f"x must have shape (N, {D}), got {tuple(x.shape)}")
        # Computing in θ's dtype keeps float32 float32 and lets backward write in place.
        return array_module_of(theta).asarray(x, dtype=theta.dtype)

    def forward(self, theta: Array, x: Array) -> tuple[Array, ForwardCache]:
        """Network output a^L, shape (N, C), and the cache for backward.

        theta: (P,) flat parameters; x: (N, D), cast to θ's dtype.
        """
        a = self._check_input(theta, x)  # a^0: (N, D)
        xp = array_module_of(theta)
        cache = ForwardCache(a=[a], z=[])
        for (W, b), activation in zip(self.layout.views(theta), self.activations, strict=True):
            z = xp.matmul(a, W)  # (N, in) @ (in, out) -> (N, out)
            z += b  # (out,) broadcast over rows
            a = activation.forward(z)  # (N, out)
            cache.z.append(z)
            cache.a.append(a)
        return a, cache

    def predict(self, theta: Array, x: Array) -> Array:
        """Network output a^L, shape (N, C), keeping no cache. x: (N, D)."""
        a = self._check_input(theta, x)  # (N, D)
        xp = array_module_of(theta)
        for (W, b), activation in zip(self.layout.views(theta), self.activations, strict=True):
            z = xp.matmul(a, W)  # (N, in) @ (in, out) -> (N, out)
            z += b
            a = activation.forward(z, out=z)  # nothing needs z again: overwrite it
        return a

    def backward(
        self, theta: Array, dout: Array, cache: ForwardCache, grad: Array | None = None
    ) -> Array:
        """∂loss/∂θ as a flat (P,) array with θ's layout, given dout = ∂loss/∂a^L (N, C).

        Writes into `grad` through its per-layer views when given (same shape and dtype
        as θ) and returns it; allocates it otherwise. θ is only read. ∂loss/∂x is never
        formed: nothing upstream of the input needs it.
        """
        xp = array_module_of(theta)
        if grad is None:
            grad = xp.empty_like(theta)
        elif grad.shape != theta.shape or grad.dtype != theta.dtype:
            raise ValueError(
                f"grad must match theta's shape {tuple(theta.shape)} and dtype {theta.dtype}, "
                f"got {tuple(grad.shape)} {grad.dtype}"
            )
        L = self.layout.num_layers
        if dout.shape != cache.a[L].shape:
            raise ValueError(
                f"dout must have the output's shape {tuple(cache.a[L].shape)}, "
                f"got {tuple(dout.shape)}"
            )
        weights = self.layout.views(theta)
        grads = self.layout.views(grad)

        delta = self._times_activation_grad(dout, L, cache)  # δ^L: (N, C)
        for layer in range(L, 0, -1):  # layer = l, from L down to 1; delta = δ^l
            W, _ = weights[layer - 1]  # (in, out)
            dW, db = grads[layer - 1]  # (in, out), (out,)
            a_prev = cache.a[layer - 1]  # a^{l-1}: (N, in)
            xp.matmul(a_prev.T, delta, out=dW)  # (in, N) @ (N, out) -> (in, out)
            xp.sum(delta, axis=0, out=db)  # (out,)
            if layer > 1:
                delta = xp.matmul(delta, W.T)  # (N, out) @ (out, in) -> (N, in)
                delta = self._times_activation_grad(delta, layer - 1, cache)  # δ^{l-1}
        return grad

    def _times_activation_grad(self, upstream: Array, layer: int, cache: ForwardCache) -> Array:
        """δ^l = upstream ⊙ σ_l'(z^l) for l = layer; upstream = ∂loss/∂a^l, (N, sizes[l])."""
        activation = self.activations[layer - 1]
        if activation.has_unit_grad:
            return upstream
        return upstream * activation.grad(cache.z[layer - 1], cache.a[layer])

    def compute_loss(self, theta: Array, x: Array, y: Array) -> float:
        """The batch-mean loss alone (no gradient). x: (N, D); y: (N,) labels or (N, C)."""
        loss, _ = self.loss_fn(self.predict(theta, x), y)
        return loss

    def loss_and_gradient(
        self, theta: Array, x: Array, y: Array, grad: Array | None = None
    ) -> tuple[float, Array]:
        """(batch-mean loss, ∂loss/∂θ of shape (P,)). x: (N, D); y: (N,) labels or (N, C).

        `grad`, when given, is filled in place and returned.
        """
        out, cache = self.forward(theta, x)  # (N, C)
        loss, dout = self.loss_fn(out, y)  # dout: (N, C)
        return loss, self.backward(theta, dout, cache, grad)

    def evaluate(self, theta: Array, x: Array, y: Array) -> dict[str, float]:
        """{"loss": ...}, plus "accuracy" for softmax_cross_entropy. x: (N, D)."""
        out = self.predict(theta, x)  # (N, C)
        loss, _ = self.loss_fn(out, y)
        metrics = {"loss": loss}
        if self.loss_name == "softmax_cross_entropy":
            metrics["accuracy"] = accuracy(out, y)
        return metrics

    def layer_gradient_norms(self, grad: Array) -> list[float]:
        """‖∂loss/∂W^l‖ (Frobenius) for l = 1..L, from a flat (P,) gradient."""
        xp = array_module_of(grad)
        return [float(xp.linalg.norm(dW)) for dW, _ in self.layout.views(grad)]
