"""One prepared run for a GPU machine: CuPy gradients equal NumPy's, and how fast a step is.

1. Gradients: for every activation (hidden) × loss, with dropout (fixed masks) and L2,
   the engine's ∂loss/∂θ on CuPy against the same computation on NumPy:
   max |g_gpu − g_cpu| / max |g_cpu| ≤ 1e-5 in float32 (≤ 1e-12 in float64).
   Then a GradientWorker(device="gpu") step against a CPU worker's.
2. Speed: the 784-256-256-10 ReLU / softmax-CE step (gradient + SGD on the device) at
   several batch sizes, timed with CUDA events (median of --repeats), against CuPy's own
   float32 GEMM rate (8192³ unless --peak-n) in the same run.

Exits 0 with a message when CuPy or a GPU is missing; 1 when a gradient check fails.

    python bench/gpu_check.py [--repeats 50] [--json gpu.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from collections.abc import Callable, Sequence

import numpy as np

from worker.activations import ACTIVATIONS
from worker.configs import LocalBatches, ModelConfig, WorkerConfig
from worker.gradcheck import random_targets
from worker.gradient_worker import GradientWorker
from worker.losses import LOSSES
from worker.model import MLP, gemm_flops

SIZES = (784, 256, 256, 10)
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}


def load_cupy():
    """The cupy module when it imports and sees a GPU, else None (with the reason printed)."""
    try:
        import cupy
    except ImportError:
        print("gpu_check: CuPy is not installed (pip install cupy-cuda12x); nothing to check")
        return None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDA driver missing or broken: not this script's failure
        print(f"gpu_check: CuPy cannot reach a GPU ({error}); nothing to check")
        return None
    if count < 1:
        print("gpu_check: no GPU visible to CuPy; nothing to check")
        return None
    return cupy


def gradient_error(cupy, model: MLP, dtype, batch: int, seed: int) -> float:
    """max |g_gpu − g_cpu| / max |g_cpu| for one random problem."""
    rng = np.random.default_rng(seed)
    theta = model.layout.init_theta(model.activation_names, seed, dtype)
    theta += (0.1 * rng.standard_normal(theta.shape)).astype(dtype)
    x = rng.standard_normal((batch, model.sizes[0])).astype(dtype)
    y = random_targets(model.loss_name, rng, batch, model.sizes[-1])
    masks = model.draw_dropout_masks(rng, batch, dtype) if model.has_dropout else None
    loss_cpu, g_cpu = model.loss_and_gradient(theta, x, y, dropout_masks=masks)
    g_cpu = g_cpu.copy()
    gpu_masks = None if masks is None else [None if m is None else cupy.asarray(m) for m in masks]
    loss_gpu, g_gpu = model.loss_and_gradient(
        cupy.asarray(theta), cupy.asarray(x), cupy.asarray(y), dropout_masks=gpu_masks
    )
    g_gpu = cupy.asnumpy(g_gpu)
    scale = float(np.max(np.abs(g_cpu))) or 1.0
    loss_error = abs(loss_gpu - loss_cpu) / max(abs(loss_cpu), 1e-30)
    return max(float(np.max(np.abs(g_gpu - g_cpu))) / scale, loss_error)


def check_gradients(cupy) -> bool:
    worst: dict[str, float] = {}
    ok = True
    for dtype in (np.float32, np.float64):
        for hidden in sorted(ACTIVATIONS):
            for loss in sorted(LOSSES):
                output = (
                    "identity"
                    if loss in ("softmax_cross_entropy", "binary_cross_entropy")
                    else hidden
                )
                model = MLP(
                    [20, 32, 24, 5],
                    [hidden, hidden, output],
                    loss,
                    dropout=0.25,
                    l2=0.01,
                    label_smoothing=0.1 if loss == "softmax_cross_entropy" else 0.0,
                )
                error = gradient_error(cupy, model, dtype, batch=33, seed=len(worst))
                worst[f"{np.dtype(dtype).name} {hidden:>10} {loss}"] = error
                ok &= error <= TOLERANCE[dtype]
    for name, error in sorted(worst.items(), key=lambda item: -item[1])[:5]:
        print(f"  worst: {name}: {error:.2e}")
    print(f"gradients CuPy vs NumPy, {len(worst)} cases: {'PASS' if ok else 'FAIL'}")
    return ok


def check_worker(cupy) -> bool:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((512, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=512)
    model = ModelConfig(
        tuple(SIZES), ("relu", "relu", "identity"), "softmax_cross_entropy", dropout=0.1
    )
    config = WorkerConfig(model, LocalBatches(128, seed=3, worker_index=1))
    theta = MLP.from_config(model).layout.init_theta(model.activations, 0)
    cpu = GradientWorker(config, X, y).compute_gradients(theta, 0, 2)
    gpu_config = dataclasses.replace(config, device="gpu")
    gpu = GradientWorker(gpu_config, X, y).compute_gradients(theta, 0, 2)
    error = float(np.max(np.abs(gpu.gradient - cpu.gradient)) / np.max(np.abs(cpu.gradient)))
    ok = error <= TOLERANCE[np.float32] and isinstance(gpu.gradient, np.ndarray)
    print(f"GradientWorker gpu vs cpu: {error:.2e} {'PASS' if ok else 'FAIL'}")
    return ok


def median_ms(cupy, fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def measure_speed(cupy, batches: Sequence[int], repeats: int, n: int = 8192) -> list[dict]:
    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    b = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    c = cupy.empty_like(a)
    peak_ms = median_ms(cupy, lambda: cupy.matmul(a, b, out=c), max(5, repeats // 5))
    peak = 2 * n**3 / (peak_ms / 1e3) / 1e9
    rows = [{"impl": "cupy_gemm_peak", "batch": n, "step_ms": peak_ms, "gflops": peak}]
    model = MLP(SIZES, ["relu", "relu", "identity"], "softmax_cross_entropy")
    theta = cupy.asarray(model.layout.init_theta(model.activation_names, 0))
    grad = cupy.empty_like(theta)
    for batch in batches:
        rng = np.random.default_rng(batch)
        x = cupy.asarray(rng.standard_normal((batch, SIZES[0]), dtype=np.float32))
        y = cupy.asarray(rng.integers(0, SIZES[-1], size=batch))

        def step(x=x, y=y) -> None:
            model.loss_and_gradient(theta, x, y, grad=grad)
            theta[...] -= 0.01 * grad  # SGD on the device (the PS runs on the host in service)

        ms = median_ms(cupy, step, repeats)
        gflops = gemm_flops(SIZES, batch) / (ms / 1e3) / 1e9
        rows.append(
            {
                "impl": "engine",
                "batch": batch,
                "step_ms": ms,
                "gflops": gflops,
                "fraction_of_peak": gflops / peak,
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024, 4096, 16384])
    parser.add_argument("--peak-n", type=int, default=8192, help="size of the peak GEMM")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    cupy = load_cupy()
    if cupy is None:
        return 0
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    print(f"GPU: {name.decode() if isinstance(name, bytes) else name}, CuPy {cupy.__version__}")
    ok = check_gradients(cupy) and check_worker(cupy)
    rows = measure_speed(cupy, args.batches, args.repeats, args.peak_n)
    print(f"{'impl':<16}{'batch':>7}{'ms/step':>10}{'GFLOP/s':>11}{'of GEMM':>9}")
    for row in rows:
        fraction = row.get("fraction_of_peak")
        print(
            f"{row['impl']:<16}{row['batch']:>7}{row['step_ms']:>10.3f}{row['gflops']:>11.1f}"
            f"{'' if fraction is None else f'{fraction:.3f}':>9}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"gradients_ok": ok, "rows": rows}, handle, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
