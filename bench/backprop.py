"""Training-step speed: this engine vs PyTorch eager vs numpy's own GEMM peak, one process.

MLP 784-256-256-10, ReLU, softmax cross-entropy, SGD, float32, on the same data and the
same initial θ, at each batch size and BLAS thread count (threadpoolctl; torch threads
too). A step is forward + backward + the SGD update: `MLP.loss_and_gradient` then
`apply_update` for the engine; `zero_grad`, forward, `backward`, `step` for PyTorch.
`numpy_naive` is a straightforward hand-written NumPy step, for scale. Every one of them
computes the batch's loss as well as the gradient, as a training step must.

Noise on a shared machine comes in bursts, so measurements interleave: every round
times one 2048³ float32 matmul (the peak), then k engine steps and k PyTorch steps (in
alternating order). Each figure is the median over all rounds; a configuration's
fraction of peak divides by the median of the peak samples taken in its own rounds.
FLOPs are those of the step's matrix products (`worker.model.gemm_flops`). With more
than one thread, each block starts after a pause (SETTLE_S) so the thread pool that
ran before (OpenBLAS's or PyTorch's OpenMP), which spins a while after its work, is
asleep and does not take cores from the one being timed.

    python bench/backprop.py                 # 20 rounds × 5 steps per configuration
    python bench/backprop.py --quick         # CI budget: 5 rounds × 4 steps
    python bench/backprop.py --json out.json # also write the rows

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, if set, slow numpy's GEMM: unset both for a run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from services.paramserver.optimizers import OptimizerConfig, apply_update, init_state
from worker.model import MLP, gemm_flops

logger = logging.getLogger("bench.backprop")

SIZES = (784, 256, 256, 10)
ACTIVATIONS = ("relu", "relu", "identity")
LOSS = "softmax_cross_entropy"
LEARNING_RATE = 0.01
PEAK_N = 2048
SEED = 0
SETTLE_S = 0.3  # > OpenBLAS's thread spin-wait (2^28 cycles) and libgomp's


@dataclass(frozen=True)
class Row:
    """One line of the table (and of --json)."""

    impl: str  # "engine" | "numpy_naive" | "torch" | "numpy_gemm_peak"
    threads: int
    batch: int
    step_ms: float
    gflops: float
    fraction_of_peak: float | None
    speedup_vs_torch: float | None


def _problem(batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shared initial θ (P,), input x (N, 784) and labels y (N,), all seeded."""
    model = MLP(SIZES, ACTIVATIONS, LOSS)
    theta = model.layout.init_theta(ACTIVATIONS, SEED)  # float32
    rng = np.random.default_rng(SEED + batch)
    x = rng.standard_normal((batch, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], size=batch)
    return theta, x, y


def engine_step(batch: int) -> Callable[[], None]:
    """One step of this engine: the worker's gradient, then the parameter server's SGD."""
    theta, x, y = _problem(batch)
    model = MLP(SIZES, ACTIVATIONS, LOSS)
    config = OptimizerConfig(kind="sgd", learning_rate=LEARNING_RATE)
    state = init_state(config, theta.size, theta.dtype)
    grad = np.empty_like(theta)
    losses = [math.nan]

    def step() -> None:
        losses[0], _ = model.loss_and_gradient(theta, x, y, grad=grad)
        apply_update(theta, grad, state, config)

    step.theta = theta  # for checking that the implementations agree
    step.losses = losses  # the last step's loss, likewise
    return step


def naive_step(batch: int) -> Callable[[], None]:
    """A straightforward hand-written NumPy step (what the engine started from), for scale:
    fresh arrays for every z, a, δ and gradient, bias and activation as separate passes.

    Like the engine (and torch) it reports the batch's loss: a training step that never
    looks at its loss does less work than any trainer would, and the comparison is for
    the same work on both sides.
    """
    theta, x, y = _problem(batch)
    model = MLP(SIZES, ACTIVATIONS, LOSS)
    layers = model.layout.views(theta)
    losses = [math.nan]

    def step() -> None:
        a, cache = x, []
        for l, (W, b) in enumerate(layers):
            z = a @ W + b  # (N, out)
            cache.append((a, z))
            a = np.maximum(z, 0) if l < len(layers) - 1 else z
        rows = np.arange(batch)
        shifted = a - a.max(axis=1, keepdims=True)
        p = np.exp(shifted)
        total = p.sum(axis=1, keepdims=True)
        losses[0] = float(np.mean(np.log(total[:, 0]) - shifted[rows, y]))  # −log p[n, y_n]
        p /= total
        p[rows, y] -= 1
        delta = p / batch  # δ^L = (p − onehot) / N
        grads = []
        for l in range(len(layers) - 1, -1, -1):
            a_prev, _ = cache[l]
            grads.append((a_prev.T @ delta, delta.sum(axis=0)))
            if l > 0:
                delta = (delta @ layers[l][0].T) * (cache[l - 1][1] > 0)
        for (W, b), (dW, db) in zip(layers, reversed(grads), strict=True):
            W -= LEARNING_RATE * dW
            b -= LEARNING_RATE * db

    step.theta = theta
    step.losses = losses
    return step


def torch_step(batch: int) -> Callable[[], None] | None:
    """One PyTorch eager step on the same θ and data; None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    theta, x, y = _problem(batch)
    model = MLP(SIZES, ACTIVATIONS, LOSS)
    layers = []
    for W, b in model.layout.views(theta):
        linear = torch.nn.Linear(*W.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W.T.copy()))  # torch keeps W as (out, in)
            linear.bias.copy_(torch.from_numpy(b.copy()))
        layers += [linear, torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])  # no ReLU after the logits
    optimizer = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x_t), y_t)
        loss.backward()
        optimizer.step()

    def current_theta() -> np.ndarray:
        tensors = [p.detach().numpy() for p in net.parameters()]  # W (out, in), b, ...
        return np.concatenate([t.T.ravel() if t.ndim == 2 else t for t in tensors])

    step.current_theta = current_theta
    return step


def gemm_peak() -> tuple[Callable[[], None], int]:
    """numpy's float32 (2048 × 2048) @ (2048 × 2048) into a preallocated output, and its FLOPs."""
    rng = np.random.default_rng(SEED)
    a = rng.standard_normal((PEAK_N, PEAK_N), dtype=np.float32)
    b = rng.standard_normal((PEAK_N, PEAK_N), dtype=np.float32)
    c = np.empty_like(a)
    return (lambda: np.matmul(a, b, out=c)), 2 * PEAK_N**3


def _time(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def measure(
    threads: int, batch: int, rounds: int, steps_per_round: int, warmup: int = 3
) -> tuple[list[float], list[float], list[float], list[float] | None]:
    """Seconds per peak GEMM, per engine, naive NumPy and torch step (None without torch)."""
    torch_module = sys.modules.get("torch")
    if torch_module is not None:
        torch_module.set_num_threads(threads)
    peak, _ = gemm_peak()
    torch_fn = torch_step(batch)
    impls = [engine_step(batch), naive_step(batch)] + ([] if torch_fn is None else [torch_fn])
    for fn in impls:
        for _ in range(warmup):
            fn()
    peak()
    settle_s = SETTLE_S if threads > 1 else 0.0
    peak_s: list[float] = []
    samples: list[list[float]] = [[] for _ in impls]
    for round_index in range(rounds):
        time.sleep(settle_s)
        peak_s.append(_time(peak))
        order = range(len(impls)) if round_index % 2 == 0 else reversed(range(len(impls)))
        for which in order:
            time.sleep(settle_s)
            impls[which]()  # one untimed step: the peak GEMM just flushed the caches
            samples[which].extend(_time(impls[which]) for _ in range(steps_per_round))
    return peak_s, samples[0], samples[1], (samples[2] if torch_fn is not None else None)


def run(
    batches: Sequence[int], threads: Sequence[int], rounds: int, steps_per_round: int
) -> list[Row]:
    """Every configuration's rows: the peak, the engine and (when installed) torch."""
    try:
        import torch  # noqa: F401  (loaded before threadpool_limits, so it limits torch too)
    except ImportError:
        logger.warning("torch is not installed: skipping PyTorch (pip install torch==2.13.0)")
    _, peak_flops = gemm_peak()
    rows: list[Row] = []
    for thread_count in threads:
        with threadpool_limits(limits=thread_count):
            for batch in batches:
                peak_s, engine_s, naive_s, torch_s = measure(
                    thread_count, batch, rounds, steps_per_round
                )
                peak_rate = peak_flops / statistics.median(peak_s) / 1e9
                rows.append(
                    Row(
                        "numpy_gemm_peak",
                        thread_count,
                        batch,
                        1e3 * statistics.median(peak_s),
                        peak_rate,
                        1.0,
                        None,
                    )
                )
                flops = gemm_flops(SIZES, batch)
                torch_ms = 1e3 * statistics.median(torch_s) if torch_s else None
                for impl, seconds in (
                    ("engine", engine_s),
                    ("numpy_naive", naive_s),
                    ("torch", torch_s),
                ):
                    if seconds is None:
                        continue
                    step_ms = 1e3 * statistics.median(seconds)
                    gflops = flops / (step_ms / 1e3) / 1e9
                    speedup = torch_ms / step_ms if torch_ms else None
                    rows.append(
                        Row(impl, thread_count, batch, step_ms, gflops, gflops / peak_rate, speedup)
                    )
    return rows


def format_table(rows: Sequence[Row]) -> str:
    header = (
        f"{'impl':<16}{'threads':>8}{'batch':>7}{'ms/step':>10}{'samples/s':>12}"
        f"{'GFLOP/s':>10}{'of peak':>9}{'vs torch':>10}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        samples = "" if row.impl == "numpy_gemm_peak" else f"{row.batch / row.step_ms * 1e3:.0f}"
        speedup = "" if row.speedup_vs_torch is None else f"{row.speedup_vs_torch:.2f}x"
        peak_batch = f"{PEAK_N}³" if row.impl == "numpy_gemm_peak" else str(row.batch)
        lines.append(
            f"{row.impl:<16}{row.threads:>8}{peak_batch:>7}{row.step_ms:>10.3f}{samples:>12}"
            f"{row.gflops:>10.1f}{row.fraction_of_peak:>9.3f}{speedup:>10}"
        )
    return "\n".join(lines)


def blas_description() -> str:
    """Which BLAS kernels numpy runs here (threadpoolctl), and the environment that steers them."""
    parts = []
    for info in threadpool_info():
        if info.get("user_api") == "blas":
            name = os.path.basename(info["filepath"])
            parts.append(
                f"{info['internal_api']} {info.get('version')} ({info.get('architecture')}) {name}"
            )
    env = {
        key: os.environ[key]
        for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
        if key in os.environ
    }
    return "; ".join(parts) + (f"; env {env}" if env else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per impl per round")
    parser.add_argument("--quick", action="store_true", help="5 rounds × 4 steps (CI budget)")
    parser.add_argument("--json", metavar="PATH", help="write the rows as a JSON list")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rounds, steps = (5, 4) if args.quick else (args.rounds, args.steps)
    logger.info("BLAS: %s", blas_description())
    logger.info(
        "MLP %s, %s, float32, SGD; median of %d steps per impl per configuration",
        "-".join(map(str, SIZES)),
        LOSS,
        rounds * steps,
    )
    rows = run(args.batches, args.threads, rounds, steps)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump([asdict(row) for row in rows], handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
