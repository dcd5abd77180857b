"""A multi-layer perceptron over a flat θ: forward caches, backward is the chain rule.

For layers l = 1..L, with a^0 = x and Θ^l = [W^l; b^l] of shape (in + 1, out):

    z^l = a^{l-1} W^l + b^l = [a^{l-1}, 1] Θ^l       # (N, out)
    a^l = σ_l(z^l)                                   # ã^l = a^l ⊙ m^l under dropout
    loss = L(a^L, y) + (λ/2) Σ_l ‖W^l‖²              # L2 on the weights, never the biases

and backward, from δ^L = ∂L/∂a^L ⊙ σ_L'(z^L) (∂L/∂a^L from the fused loss):

    ∂loss/∂Θ^l = [a^{l-1}, 1]ᵀ δ^l  (+ λ W^l)        # (in + 1, out): dW^l over db^l
    δ^{l-1}    = (δ^l W^lᵀ) ⊙ m^{l-1} ⊙ σ_{l-1}'(z^{l-1})

Every step is a matrix product over the whole batch; δ^0 = ∂loss/∂x is never formed.
A layer's two halves live side by side in `worker.dense.Dense`; `forward` and `backward`
here walk the layers up and down.
The model holds no weights: θ is passed in, gradients come out, and updating θ is the
parameter server's job. Training steps reuse a `Workspace` per batch shape
(`worker.step_buffers`), so a step allocates nothing the size of the batch; `predict` and
the other passes of the `Network` base (`worker.network`) allocate, for any batch size.

Two weight decays exist, on purpose: `MLP(l2=λ)` is part of the loss (W only, reported
in the loss, covered by the gradient check, the same for every optimizer), while
`OptimizerConfig(weight_decay=λ)` lives in the parameter server's update (all of θ,
decoupled from Adam's scaling for AdamW). With plain SGD both add λW to the gradient of W.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from worker.backend import Array, array_module_of
from worker.configs import ModelConfig
from worker.dense import Dense
from worker.dropout import draw_masks, dropout_rates
from worker.network import Network
from worker.step_buffers import StepBuffers
from worker.workspace import Workspace


def gemm_flops(sizes: Sequence[int], batch: int) -> int:
    """Floating-point operations of one training step's matrix products, 2·M·K·N each.

    Forward z^l = a^{l-1} W^l and backward ∂loss/∂W^l = a^{l-1}ᵀ δ^l for every layer,
    δ^l W^lᵀ for l ≥ 2 (nothing flows into the input). Biases and element-wise work
    are not counted.
    """
    per_layer = [2 * batch * fan_in * fan_out for fan_in, fan_out in itertools.pairwise(sizes)]
    return 2 * sum(per_layer) + sum(per_layer[1:])


class MLP(Network):
    """Dense layers with per-layer activations and a fused loss, all over a flat θ."""

    def __init__(
        self,
        sizes: Sequence[int],
        activations: Sequence[str],
        loss: str,
        *,
        l2: float = 0.0,
        dropout: float | Sequence[float] = 0.0,
        label_smoothing: float = 0.0,
        huber_delta: float = 1.0,
    ) -> None:
        """sizes = [D, H1, ..., C]; activations[l-1] is layer l's σ; loss names the loss.

        l2: λ ≥ 0 of the (λ/2) Σ‖W^l‖² term in the loss.
        dropout: rate p ∈ [0, 1) for every hidden layer's output, or one per hidden layer;
            applied only when a step gets an `rng` or `dropout_masks`.
        label_smoothing: ε for softmax_cross_entropy; huber_delta: δ for huber.

        For "softmax_cross_entropy" and "binary_cross_entropy" the output layer is usually
        "identity" (its outputs are the logits). Raises ValueError naming the bad argument.
        """
        super().__init__(
            sizes, activations, loss, label_smoothing=label_smoothing, huber_delta=huber_delta
        )
        if isinstance(l2, bool) or not isinstance(l2, int | float) or not math.isfinite(l2):
            raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
        if l2 < 0:
            raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
        self.l2 = float(l2)
        self.dropout = dropout_rates(dropout, self.layout.num_layers - 1)
        self._has_dropout = any(self.dropout)
        self._buffers = StepBuffers(self.layout, self.activations, self.dropout)
        last = len(self.activations) - 1
        self.layers = [
            Dense(activation, first=l == 0, last=l == last)
            for l, activation in enumerate(self.activations)
        ]

    @classmethod
    def from_config(cls, config: ModelConfig) -> MLP:
        """The MLP a `ModelConfig` describes."""
        return cls(
            config.sizes,
            config.activations,
            config.loss,
            l2=config.l2,
            dropout=config.dropout,
            label_smoothing=config.label_smoothing,
            huber_delta=config.huber_delta,
        )

    def __repr__(self) -> str:
        options = []
        if self.l2:
            options.append(f"l2={self.l2}")
        if any(self.dropout):
            options.append(f"dropout={list(self.dropout)}")
        extra = "".join(f", {option}" for option in options)
        return (
            f"MLP(sizes={list(self.layout.sizes)}, activations={self.activation_names}, "
            f"loss={self.loss_fn!r}{extra})"
        )

    @property
    def has_dropout(self) -> bool:
        return self._has_dropout

    def gemm_flops(self, batch: int) -> int:
        """FLOPs of one training step's matrix products at this batch size."""
        return gemm_flops(self.sizes, batch)

    # ---------------------------------------------------------------- buffers

    def workspace(self, theta: Array, batch: int) -> Workspace:
        """The buffers for a batch of `batch` rows in θ's dtype and array module."""
        return self._buffers.workspace(theta, batch)

    def draw_dropout_masks(
        self, rng: np.random.Generator, batch: int, dtype: object = np.float32
    ) -> list[np.ndarray | None]:
        """Scaled masks m^l, (batch, H_l), one per hidden layer (None where p = 0)."""
        return draw_masks(rng, self.dropout, batch, self.sizes[1:-1], dtype)

    # ---------------------------------------------------------------- forward and backward

    def forward(
        self,
        theta: Array,
        x: Array,
        *,
        rng: np.random.Generator | None = None,
        dropout_masks: Sequence[Array | None] | None = None,
    ) -> tuple[Array, Workspace]:
        """Network output a^L, shape (N, C), and the workspace backward reads.

        theta: (P,) flat parameters; x: (N, D), cast to θ's dtype. Dropout applies when
        `dropout_masks` (one (N, H_l) mask per hidden layer) or an `rng` to draw them is
        given. The output and the workspace are overwritten by the next step of this shape.
        """
        x = self._check_input(theta, x)  # a^0: (N, D)
        ws = self._buffers.workspace(theta, x.shape[0])
        ws.x = x
        ws.dropout_active = self._buffers.load_masks(ws, rng, dropout_masks)
        a = x
        for layer, block, buffers in zip(
            self.layers, self._buffers.blocks(theta), ws.layers, strict=True
        ):
            a = layer.forward(a, block, buffers, ws)  # ã^l: [ã^l, 1] (N, out + 1); a^L last
        return a, ws

    def backward(
        self, theta: Array, dout: Array, cache: Workspace, grad: Array | None = None
    ) -> Array:
        """∂loss/∂θ as a flat (P,) array with θ's layout, given dout = ∂loss/∂a^L (N, C).

        `cache` is the workspace `forward` returned for this θ and batch. Writes into
        `grad` (same shape and dtype as θ) when given and returns it; allocates it
        otherwise. θ is only read; the L2 term's λW^l is included. ∂loss/∂x is never
        formed: nothing upstream of the input needs it.
        """
        xp = array_module_of(theta)
        ws = cache
        if grad is None:
            grad = xp.empty_like(theta)
        elif grad.shape != theta.shape or grad.dtype != theta.dtype:
            raise ValueError(
                f"grad must match theta's shape {tuple(theta.shape)} and dtype {theta.dtype}, "
                f"got {tuple(grad.shape)} {grad.dtype}"
            )
        top = ws.layers[-1]
        if dout is not top.delta:
            if tuple(dout.shape) != tuple(top.delta.shape):
                raise ValueError(
                    f"dout must have the output's shape {tuple(top.delta.shape)}, "
                    f"got {tuple(dout.shape)}"
                )
            top.delta[...] = dout
        weights, grads, buffers = self._buffers.blocks(theta), self._buffers.blocks(grad), ws.layers
        for l in range(len(buffers) - 1, -1, -1):  # l = layer − 1, from L − 1 down to 0
            below = buffers[l - 1] if l else None
            a_below = below.out if below is not None else ws.x  # [ã^{l-1}, 1], or x
            self.layers[l].backward(a_below, weights[l], grads[l], buffers[l], below, ws)
        if self.l2:
            self._add_l2_gradient(theta, grad, ws)
        return grad

    def _add_l2_gradient(self, theta: Array, grad: Array, ws: Workspace) -> None:
        xp = array_module_of(theta)
        for (W, _), (dW, _) in zip(self.layout.views(theta), self.layout.views(grad), strict=True):
            decay = ws.scratch_for_weights(xp, W.size).reshape(W.shape)
            xp.multiply(W, self.l2, out=decay)
            dW += decay  # + λ W^l

    def penalty(self, theta: Array) -> float:
        """(λ/2) Σ_l ‖W^l‖², the L2 term of the loss (0.0 when λ = 0)."""
        if not self.l2:
            return 0.0
        xp = array_module_of(theta)
        total = sum(float(xp.vdot(W, W)) for W, _ in self.layout.views(theta))
        return 0.5 * self.l2 * total

    # ---------------------------------------------------------------- losses

    def loss_and_gradient(
        self,
        theta: Array,
        x: Array,
        y: Array,
        grad: Array | None = None,
        *,
        rng: np.random.Generator | None = None,
        dropout_masks: Sequence[Array | None] | None = None,
    ) -> tuple[float, Array]:
        """(batch-mean loss, ∂loss/∂θ of shape (P,)). x: (N, D); y: (N,) labels or (N, C).

        The loss includes the L2 term. `grad`, when given, is filled in place and
        returned; `rng` / `dropout_masks` switch dropout on (see `forward`).
        """
        out, ws = self.forward(theta, x, rng=rng, dropout_masks=dropout_masks)  # (N, C)
        loss, dout = self.loss_fn(out, y, dout=ws.layers[-1].delta)  # dout: (N, C)
        return loss + self.penalty(theta), self.backward(theta, dout, ws, grad)

    def compute_loss(
        self,
        theta: Array,
        x: Array,
        y: Array,
        *,
        dropout_masks: Sequence[Array | None] | None = None,
    ) -> float:
        """The loss `loss_and_gradient` reports, without the gradient (L2 term included)."""
        out, ws = self.forward(theta, x, dropout_masks=dropout_masks)
        loss, _ = self.loss_fn(out, y, dout=ws.layers[-1].delta)
        return loss + self.penalty(theta)
