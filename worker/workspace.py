"""Preallocated buffers for one batch shape: a training step allocates nothing batch-sized.

A hidden layer of width H keeps its arrays as (N, H + 1): column H of the layer's output
is all ones, so the next layer's z = [a, 1] Θ is one matrix product with the bias inside
(`ParamLayout.blocks`), and ∂loss/∂Θ = [a, 1]ᵀ δ gives dW and db together. Element-wise
passes (activation, its derivative, dropout) run over the whole contiguous (N, H + 1)
buffer, which NumPy does about twice as fast as over the strided (N, H) view; the matrix
products read and write the [:, :H] views, which BLAS takes at no cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType

from worker.activations import Activation
from worker.backend import Array


@dataclass(eq=False)
class LayerBuffers:
    """Buffers of one layer; (N, width) where `width` is H + 1 for hidden layers, C for the last.

    fan_out: H (or C), the layer's units.
    out: what the next layer reads: [ã^l, 1] for hidden layers (column H all ones), a^L last.
    a: σ(z^l) before dropout; `out` itself when the layer has no dropout.
    z: z^l; `a` itself (σ applied in place) unless σ' needs z.
    mask: the scaled dropout mask m^l (column H = 1), None without dropout.
    delta: δ^l in [:, :H] (column H stays 0); for the last layer ∂loss/∂a^L, then δ^L.
    work: scratch buffers for σ (`Activation.work_dtypes`).
    z_view, delta_view: the (N, H) views the matrix products write (the whole array for
    the last layer).
    """

    fan_out: int
    out: Array
    a: Array
    z: Array
    mask: Array | None
    delta: Array
    work: list[Array] = field(default_factory=list)
    z_view: Array = field(init=False)
    delta_view: Array = field(init=False)

    def __post_init__(self) -> None:
        self.z_view = self.z[:, : self.fan_out]  # (N, out)
        self.delta_view = self.delta[:, : self.fan_out]


class Workspace:
    """Every buffer a forward and backward pass over a batch of N rows needs.

    After `MLP.forward`, `x` is the batch (N, D) and `dropout_active` tells whether the
    masks were applied; `layers[l - 1]` holds layer l. `xp`, `batch` and `dtype` are what
    the model matches a step against to reuse the workspace. Arrays are overwritten by the next
    step of the same shape: copy what must outlive it.
    """

    def __init__(
        self,
        xp: ModuleType,
        batch: int,
        dtype: object,
        sizes: Sequence[int],
        activations: Sequence[Activation],
        dropout: Sequence[float],
    ) -> None:
        self.xp = xp
        self.batch = batch
        self.dtype = dtype
        self.x: Array | None = None
        self.dropout_active = False
        num_layers = len(sizes) - 1
        self.layers: list[LayerBuffers] = []
        for layer, activation in enumerate(activations, start=1):
            is_hidden = layer < num_layers
            width = sizes[layer] + 1 if is_hidden else sizes[layer]
            has_dropout = is_hidden and dropout[layer - 1] > 0

            def buffer(kind: str = "float", is_hidden: bool = is_hidden, width: int = width):
                array = xp.zeros((batch, width), dtype=bool if kind == "bool" else dtype)
                if is_hidden and kind == "ones column":
                    array[:, -1] = 1  # under b^{l+1}; σ(1) = 1 keeps it through z → a → out
                return array

            out = buffer("ones column")
            a = buffer("ones column") if has_dropout else out
            z = buffer("ones column") if activation.needs_z else a
            mask = buffer("ones column") if has_dropout else None
            work = [buffer(kind) for kind in activation.work_dtypes]
            self.layers.append(LayerBuffers(sizes[layer], out, a, z, mask, buffer(), work))
        # b^1 then a 0 under layer 1's ones column; ones for db^1 = 1ᵀ δ^1.
        self.bias1 = xp.zeros(self.layers[0].z.shape[1], dtype=dtype)
        self.bias1_head = self.bias1[: sizes[1]]  # where forward copies b^1
        self.ones = xp.ones(batch, dtype=dtype)
        self.weight_scratch: Array | None = None  # λ W^l for the L2 term, made on first use

    def scratch_for_weights(self, xp: ModuleType, size: int) -> Array:
        """A flat buffer of at least `size` elements in the workspace's dtype."""
        if self.weight_scratch is None or self.weight_scratch.size < size:
            self.weight_scratch = xp.empty(size, dtype=self.dtype)
        return self.weight_scratch[:size]
