"""θ as one flat contiguous array, with each layer's W^l and b^l as zero-copy views into it.

Layer l (1..L) maps sizes[l-1] → sizes[l]. Its block in θ is W^l, shape (in, out) in
row-major order, followed by b^l, shape (out,). A gradient buffer uses the same layout,
so an optimizer step is a few vector operations over one array, and a pull or push of
θ or g is a single array.

Because b^l follows W^l's last row, each layer's block is also the row-major matrix
Θ^l = [W^l; b^l] of shape (in + 1, out), so z = [a, 1] Θ^l is one matrix product
(`blocks`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import DTypeLike

from worker.backend import Array, to_numpy
from worker.initializers import draw_weights, resolve_initializers


class ParamLayout:
    """Offsets of every W^l and b^l inside the flat parameter vector θ."""

    def __init__(self, sizes: Sequence[int]) -> None:
        """`sizes` = [D, H1, ..., C]: the input width, every hidden width, the output width."""
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(
                f"sizes needs at least 2 entries (input and output widths), got {sizes}"
            )
        for index, size in enumerate(sizes):
            if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
                raise ValueError(f"sizes[{index}] must be an integer >= 1, got {size!r}")
        self._sizes = tuple(int(size) for size in sizes)
        # Per layer: (start of W, start of b, end of b) within θ.
        self._offsets: list[tuple[int, int, int]] = []
        offset = 0
        for fan_in, fan_out in zip(self._sizes[:-1], self._sizes[1:], strict=True):
            w_start, b_start = offset, offset + fan_in * fan_out
            offset = b_start + fan_out
            self._offsets.append((w_start, b_start, offset))
        self._size = offset
        # Per layer: Θ^l's slice of θ and its (in + 1, out) shape.
        self._block_specs = [
            (w_start, b_end, (fan_in + 1, fan_out))
            for (w_start, _, b_end), fan_in, fan_out in zip(
                self._offsets, self._sizes[:-1], self._sizes[1:], strict=True
            )
        ]

    @property
    def sizes(self) -> tuple[int, ...]:
        """Layer widths [D, H1, ..., C]."""
        return self._sizes

    @property
    def num_layers(self) -> int:
        """L, the number of weight layers."""
        return len(self._sizes) - 1

    @property
    def size(self) -> int:
        """Total number of scalars in θ."""
        return self._size

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every tensor by name: {"W1": (D, H1), "b1": (H1,), ...}."""
        shapes: dict[str, tuple[int, ...]] = {}
        for layer, (fan_in, fan_out) in enumerate(
            zip(self._sizes[:-1], self._sizes[1:], strict=True), start=1
        ):
            shapes[f"W{layer}"] = (fan_in, fan_out)
            shapes[f"b{layer}"] = (fan_out,)
        return shapes

    def _check_flat(self, theta: Array) -> None:
        if theta.ndim != 1 or theta.shape[0] != self._size:
            raise ValueError(
                f"theta must be a 1-D array of {self._size} scalars for sizes "
                f"{list(self._sizes)}, got shape {tuple(theta.shape)}"
            )

    def views(self, theta: Array) -> list[tuple[Array, Array]]:
        """[(W^1, b^1), ..., (W^L, b^L)] as zero-copy views of the 1-D array `theta`.

        W^l has shape (in, out), b^l shape (out,). Writing through a view writes θ, so
        the same call on a gradient buffer gives the places to write ∂loss/∂W^l into.
        Works for NumPy and CuPy arrays alike.
        """
        self._check_flat(theta)
        views = []
        for (w_start, b_start, b_end), fan_in, fan_out in zip(
            self._offsets, self._sizes[:-1], self._sizes[1:], strict=True
        ):
            W = theta[w_start:b_start].reshape(fan_in, fan_out)  # (in, out)
            b = theta[b_start:b_end]  # (out,)
            views.append((W, b))
        return views

    def shard_bounds(self, shards: int) -> list[tuple[int, int]]:
        """θ cut into `shards` contiguous ranges [lo, hi) of near-equal length (a sharded
        parameter server holds one each; they need not follow layer boundaries)."""
        if not 1 <= shards <= self._size:
            raise ValueError(f"shards must be in [1, {self._size}], got {shards}")
        base, extra = divmod(self._size, shards)
        bounds, lo = [], 0
        for s in range(shards):
            hi = lo + base + (1 if s < extra else 0)
            bounds.append((lo, hi))
            lo = hi
        return bounds

    def squares(self, part: np.ndarray, lo: int) -> tuple[np.ndarray, float]:
        """(weight squares, Σ part²) of a gradient's part θ[lo : lo + len(part)], in one
        pass over it (a step's statistics read every entry of its gradient once).

        Weight squares: Σ (∂loss/∂W^l)² per layer over the part's entries that belong to
        some W^l (biases excluded), (L,) float64. Summed over a gradient's shards and
        square-rooted, they give every ‖∂loss/∂W^l‖ without ever joining the shards. The
        whole Σ part² adds the biases' entries to them."""
        hi = lo + len(part)
        squares = np.zeros(self.num_layers)
        biases = 0.0
        for layer, (w_start, b_start, b_end) in enumerate(self._offsets):
            a, b = max(w_start, lo), min(b_start, hi)
            if a < b:
                chunk = part[a - lo : b - lo]
                squares[layer] = float(chunk @ chunk)  # BLAS dot in θ's dtype: no copy
            a, b = max(b_start, lo), min(b_end, hi)
            if a < b:
                chunk = part[a - lo : b - lo]
                biases += float(chunk @ chunk)
        return squares, float(squares.sum()) + biases

    def blocks(self, theta: Array) -> list[Array]:
        """[Θ^1, ..., Θ^L], Θ^l = [W^l; b^l] of shape (in + 1, out), zero-copy views of θ."""
        self._check_flat(theta)
        return [theta[start:end].reshape(shape) for start, end, shape in self._block_specs]

    def to_dict(self, theta: Array) -> dict[str, np.ndarray]:
        """Host copies of every tensor: {"W1": (D, H1), "b1": (H1,), "W2": ...}."""
        tensors: dict[str, np.ndarray] = {}
        for layer, (W, b) in enumerate(self.views(theta), start=1):
            tensors[f"W{layer}"] = np.array(to_numpy(W))  # np.array copies: no alias into θ
            tensors[f"b{layer}"] = np.array(to_numpy(b))
        return tensors

    def from_dict(
        self, tensors: Mapping[str, np.ndarray], dtype: DTypeLike = np.float32
    ) -> np.ndarray:
        """Pack {"W1": ..., "b1": ..., ...} into a new flat θ of `dtype`.

        Raises ValueError naming the key that is missing, unexpected or of the wrong shape.
        """
        shapes = self.shapes()
        unexpected = sorted(set(tensors) - set(shapes))
        if unexpected:
            raise ValueError(f"unexpected key {unexpected[0]!r}; expected {', '.join(shapes)}")
        theta = np.empty(self._size, dtype=dtype)
        flat_views = [tensor for pair in self.views(theta) for tensor in pair]
        for (key, shape), view in zip(shapes.items(), flat_views, strict=True):
            if key not in tensors:
                raise ValueError(f"missing key {key!r}; expected {', '.join(shapes)}")
            value = np.asarray(to_numpy(tensors[key]))
            if value.shape != shape:
                raise ValueError(
                    f"{key!r} has shape {value.shape}, expected {shape} for sizes "
                    f"{list(self._sizes)}"
                )
            view[...] = value
        return theta

    def init_theta(
        self,
        activations: Sequence[str],
        seed: int,
        dtype: DTypeLike = np.float32,
        *,
        init: str | Sequence[str] = "auto",
    ) -> np.ndarray:
        """A fresh θ: seeded weights by `init`, b^l = 0.

        `init` is "auto" (He-normal for relu-like layers, Glorot-uniform otherwise),
        "he", "glorot", or a list with one of these per layer; `worker.initializers`
        gives the formulas. `activations[l-1]` names layer l's activation. The same seed
        always gives the same θ (drawn in float64 by `np.random.default_rng(seed)`, then
        cast to `dtype`).
        """
        activations = list(activations)
        if len(activations) != self.num_layers:
            raise ValueError(
                f"expected {self.num_layers} activations (one per layer) for sizes "
                f"{list(self._sizes)}, got {len(activations)}"
            )
        schemes = resolve_initializers(init, activations)
        rng = np.random.default_rng(seed)
        theta = np.zeros(self._size, dtype=dtype)
        for (W, _), scheme in zip(self.views(theta), schemes, strict=True):
            W[...] = draw_weights(rng, scheme, *W.shape)
        return theta
