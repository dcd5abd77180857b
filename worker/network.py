"""An MLP's structure, and the passes over θ that need no training buffers.

`Network` holds what every pass reads: the layout of the flat θ (`ParamLayout`), one
activation σ_l per layer and the loss. Its passes allocate fresh arrays, for any batch size:
`layer_outputs` runs z^l = a^{l-1} W^l + b^l, a^l = σ_l(z^l) for l = 1..L, the one
allocating forward: `predict` keeps its last output, inspection (the gradient check's
distance from relu's kink) its z^l; `evaluate` scores the output; `layer_gradient_norms`
reads a gradient. `MLP` (`worker.model`) is a `Network` with what training adds: the L2 term,
dropout, and forward and backward passes over buffers reused from step to step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from worker.activations import Activation, get_activation
from worker.backend import Array, array_module_of
from worker.layout import ParamLayout
from worker.losses import Loss, get_loss


class Network:
    """Layer widths, per-layer activations and a loss over a flat θ; allocating passes."""

    def __init__(
        self,
        sizes: Sequence[int],
        activations: Sequence[str],
        loss: str,
        *,
        label_smoothing: float = 0.0,
        huber_delta: float = 1.0,
    ) -> None:
        """sizes = [D, H1, ..., C]; activations[l-1] is layer l's σ; loss names the loss.

        label_smoothing: ε for softmax_cross_entropy; huber_delta: δ for huber.
        Raises ValueError naming the bad argument.
        """
        self.layout = ParamLayout(sizes)
        activation_names = list(activations)
        if len(activation_names) != self.layout.num_layers:
            raise ValueError(
                f"expected {self.layout.num_layers} activations (one per layer) for sizes "
                f"{list(self.layout.sizes)}, got {len(activation_names)}"
            )
        self.activations: list[Activation] = [get_activation(n) for n in activation_names]
        self.loss_fn: Loss = get_loss(
            loss, label_smoothing=label_smoothing, huber_delta=huber_delta
        )
        self.loss_fn.check_output_width(self.layout.sizes[-1])
        self.activation_names = activation_names
        self.loss_name = loss

    @property
    def sizes(self) -> tuple[int, ...]:
        """Layer widths [D, H1, ..., C]."""
        return self.layout.sizes

    def _check_input(self, theta: Array, x: Array) -> Array:
        D = self.layout.sizes[0]
        if x.ndim != 2 or x.shape[1] != D or x.shape[0] == 0:
            raise ValueError(f"x must have shape (N, {D}) with N >= 1, got {tuple(x.shape)}")
        if type(x) is type(theta) and x.dtype == theta.dtype:
            return x
        # Computing in θ's dtype keeps float32 float32 and lets backward write in place.
        return array_module_of(theta).asarray(x, dtype=theta.dtype)

    def layer_outputs(
        self,
        theta: Array,
        x: Array,
        *,
        dropout_masks: Sequence[Array | None] | None = None,
        keep_z: bool = False,
    ) -> Iterator[tuple[Array | None, Array]]:
        """(z^l, ã^l) for l = 1..L, as fresh arrays: z^l = ã^{l-1} W^l + b^l, a^l = σ_l(z^l),
        ã^l = a^l ⊙ m^l where `dropout_masks` gives layer l a mask. x: (N, D).

        z^l is None unless `keep_z`: without it σ overwrites z in place, so a pass that
        wants only the output allocates one array per layer.
        """
        a = self._check_input(theta, x)  # a^0: (N, D)
        xp = array_module_of(theta)
        masks = list(dropout_masks) if dropout_masks is not None else []
        for l, ((W, b), activation) in enumerate(
            zip(self.layout.views(theta), self.activations, strict=True)
        ):
            z = xp.matmul(a, W)  # (N, in) @ (in, out) -> (N, out)
            z += b
            a = activation.forward(z) if keep_z else activation.forward(z, out=z)
            if l < len(masks) and masks[l] is not None:
                a = a * xp.asarray(masks[l], dtype=a.dtype)  # ã = a ⊙ m
            yield (z if keep_z else None), a

    def predict(self, theta: Array, x: Array) -> Array:
        """Network output a^L, shape (N, C), without dropout; a fresh array. x: (N, D)."""
        *_, (_, out) = self.layer_outputs(theta, x)  # the last layer's (z, a^L)
        return out

    def evaluate(self, theta: Array, x: Array, y: Array) -> dict[str, float]:
        """{"loss": ...} of the data term (no L2, no dropout), plus "accuracy" for classifiers."""
        out = self.predict(theta, x)  # (N, C)
        loss, _ = self.loss_fn(out, y)
        return {"loss": loss, **self.loss_fn.metrics(out, y)}

    def layer_gradient_norms(self, grad: Array) -> list[float]:
        """‖∂loss/∂W^l‖ (Frobenius) for l = 1..L, from a flat (P,) gradient."""
        xp = array_module_of(grad)
        return [math.sqrt(float(xp.vdot(dW, dW))) for dW, _ in self.layout.views(grad)]
