"""What a model's training steps reuse: workspaces, Θ^l views and loaded dropout masks.

`StepBuffers` keeps a `Workspace` for each of the last few batch shapes and the Θ^l views
of the last θ and gradient arrays. A worker runs step after step of one batch shape over
the same θ and gradient arrays, so both are found again by a check or two instead of being
rebuilt, and a step allocates nothing the size of the batch. `load_masks` copies a step's
dropout masks m^l into its workspace.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from worker.activations import Activation
from worker.backend import Array, array_module_of
from worker.dropout import draw_masks
from worker.layout import ParamLayout
from worker.workspace import Workspace

# Batch shapes whose buffers a model keeps (a worker sees one or two: the batch, the last).
_MAX_WORKSPACES = 4


class StepBuffers:
    """One model's workspaces (the last few batch shapes) and Θ^l views (the last two arrays)."""

    def __init__(
        self, layout: ParamLayout, activations: Sequence[Activation], dropout: Sequence[float]
    ) -> None:
        """layout, activations and dropout rates (one per hidden layer) of the model."""
        self.layout = layout
        self.activations = activations
        self.dropout = dropout
        self._has_dropout = any(dropout)
        self._workspaces: OrderedDict[tuple, Workspace] = OrderedDict()
        self._last_workspace: Workspace | None = None
        # (array, its views) for the last θ and gradient buffer: see `blocks`.
        self._block_cache: list[tuple[Array, list[tuple[Array, Array, Array]]]] = []

    def workspace(self, theta: Array, batch: int) -> Workspace:
        """The buffers for a batch of `batch` rows in θ's dtype and array module."""
        xp = array_module_of(theta)
        ws = self._last_workspace
        if ws is not None and ws.batch == batch and ws.dtype == theta.dtype and ws.xp is xp:
            return ws  # the usual case: the same shape as last step
        key = (batch, theta.dtype.str, xp.__name__)
        ws = self._workspaces.get(key)
        if ws is None:
            ws = Workspace(
                xp, batch, theta.dtype, self.layout.sizes, self.activations, self.dropout
            )
            self._workspaces[key] = ws
            while len(self._workspaces) > _MAX_WORKSPACES:
                self._workspaces.popitem(last=False)
        else:
            self._workspaces.move_to_end(key)
        self._last_workspace = ws
        return ws

    def blocks(self, flat: Array) -> list[tuple[Array, Array, Array]]:
        """[(Θ^l, W^l, b^l) for l = 1..L]: Θ^l (in + 1, out) from `layout.blocks(flat)`, W^l
        (in, out) its first rows, b^l (out,) its last; zero-copy views of `flat`.

        Kept for the last two arrays (a step's θ and gradient buffer, the same every
        step): slicing them afresh is most of a small step's Python time. Views keep their
        array alive, so an array found here by identity still is that memory. A strided
        `flat` reshapes to copies, which go stale when it changes: never kept.
        """
        for array, blocks in self._block_cache:
            if array is flat and flat.shape == (self.layout.size,):
                return blocks
        blocks = [(Theta, Theta[:-1], Theta[-1]) for Theta in self.layout.blocks(flat)]
        if flat.flags.c_contiguous:
            self._block_cache = [(flat, blocks), *self._block_cache[:1]]
        return blocks

    def load_masks(
        self,
        ws: Workspace,
        rng: np.random.Generator | None,
        masks: Sequence[Array | None] | None,
    ) -> bool:
        """Copy this step's dropout masks into the workspace; whether dropout applies."""
        if not self._has_dropout or (rng is None and masks is None):
            return False
        if masks is None:
            masks = draw_masks(rng, self.dropout, ws.batch, self.layout.sizes[1:-1], ws.dtype)
        if len(masks) != len(self.dropout):
            raise ValueError(
                f"dropout_masks needs one entry per hidden layer ({len(self.dropout)}), "
                f"got {len(masks)}"
            )
        for layer, (mask, buffers) in enumerate(zip(masks, ws.layers, strict=False), start=1):
            if buffers.mask is None:
                continue
            width = buffers.mask.shape[1] - 1
            if mask is None or tuple(mask.shape) != (ws.batch, width):
                raise ValueError(
                    f"dropout_masks[{layer - 1}] must have shape ({ws.batch}, {width}), "
                    f"got {None if mask is None else tuple(mask.shape)}"
                )
            buffers.mask[:, :width] = array_module_of(buffers.mask).asarray(mask)
        return True
