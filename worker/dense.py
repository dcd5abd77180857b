"""A dense layer's forward and backward, side by side (CS231n's `affine_relu` pair).

Layer l maps the layer below's output ã^{l-1} (a^0 = x) to its own:

    z^l = [ã^{l-1}, 1] Θ^l                    # (N, in + 1) @ (in + 1, out) -> (N, out)
    a^l = σ_l(z^l)
    ã^l = a^l ⊙ m^l                           # dropout: hidden layers, training only

and back, given upstream = ∂loss/∂ã^l in the layer's δ buffer:

    δ^l              = upstream ⊙ m^l ⊙ σ_l'(z^l)
    ∂loss/∂Θ^l       = [ã^{l-1}, 1]ᵀ δ^l      # (in + 1, out): dW^l over db^l
    ∂loss/∂ã^{l-1}   = δ^l W^lᵀ               # (N, in): the layer below's upstream

Both run over the layer's preallocated `LayerBuffers` (`worker.workspace`): a hidden
layer's output carries a column of ones, so the next layer's product takes its bias in the
same GEMM. The first layer reads x as given (no ones column): z^1 = x W^1 + b^1 and
db^1 = 1ᵀ δ^1, the two products the ones column saves every other layer.
"""

from __future__ import annotations

from worker.activations import Activation
from worker.backend import Array, array_module_of
from worker.workspace import LayerBuffers, Workspace

# (Θ^l, W^l, b^l): Θ^l (in + 1, out) and its views W^l (in, out), b^l (out,).
Block = tuple[Array, Array, Array]


class Dense:
    """Layer l of an MLP: its activation σ_l and where it sits (first, last)."""

    def __init__(self, activation: Activation, *, first: bool, last: bool) -> None:
        self.activation = activation
        self.first = first
        self.last = last

    def forward(self, a_below: Array, theta: Block, buffers: LayerBuffers, ws: Workspace) -> Array:
        """ã^l into `buffers.out` ([ã^l, 1] for a hidden layer, a^L for the last); returns it.

        a_below: x (N, D) for the first layer, else the layer below's [ã, 1] (N, in + 1).
        """
        xp = array_module_of(a_below)
        Theta, W, b = theta
        if self.first:
            xp.matmul(a_below, W, out=buffers.z_view)  # (N, D) @ (D, out)
            ws.bias1_head[...] = b
            xp.add(buffers.z, ws.bias1, out=buffers.z)  # + b^1 (0 under the ones column)
        else:
            xp.matmul(a_below, Theta, out=buffers.z_view)  # [ã, 1] (N, in + 1) @ Θ
        dropout = ws.dropout_active and buffers.mask is not None
        a = buffers.a if ws.dropout_active else buffers.out
        self.activation.forward(buffers.z, a, buffers.work)  # a = σ(z)
        if not self.last:
            if dropout:
                xp.multiply(a, buffers.mask, out=buffers.out)  # ã = a ⊙ m
            if not self.activation.keeps_one:
                buffers.out[:, -1] = 1  # σ(1) ≠ 1 changed the ones column; restore it
        return buffers.out

    def backward(
        self,
        a_below: Array,
        theta: Block,
        grad: Block,
        buffers: LayerBuffers,
        below: LayerBuffers | None,
        ws: Workspace,
    ) -> None:
        """δ^l in `buffers.delta` from the upstream gradient there; ∂loss/∂Θ^l into `grad`;
        ∂loss/∂ã^{l-1} into `below.delta` (None for the first layer: nothing needs ∂x).

        a_below: what `forward` read; theta and grad: (Θ, W, b) views of θ and of ∂loss/∂θ.
        """
        xp = array_module_of(a_below)
        activation = self.activation
        if ws.dropout_active and buffers.mask is not None:
            xp.multiply(buffers.delta, buffers.mask, out=buffers.delta)  # ⊙ m: ∂loss/∂a
        if not activation.has_unit_grad:
            a = buffers.a if ws.dropout_active else buffers.out
            z = buffers.z if activation.needs_z else None
            activation.backward(buffers.delta, z, a, buffers.work)  # ⊙ σ'(z): δ
        delta = buffers.delta_view  # δ^l: (N, out)
        dTheta, dW, db = grad
        if self.first:
            xp.matmul(a_below.T, delta, out=dW)  # (D, N) @ (N, out)
            xp.matmul(ws.ones, delta, out=db)  # db^1 = 1ᵀ δ^1
        else:
            xp.matmul(a_below.T, delta, out=dTheta)  # [ã, 1]ᵀ (in + 1, N) @ (N, out)
        if below is not None:
            xp.matmul(delta, theta[1].T, out=below.delta_view)  # (N, out) @ (out, in)
