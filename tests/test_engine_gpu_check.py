"""bench/gpu_check.py without a GPU: it exits cleanly, and its logic runs on a stand-in.

The stand-in "cupy" is NumPy behind CuPy's names, so this checks the script's own code
paths (loading, comparing, timing, reporting), not CuPy's arithmetic: that needs a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", BENCH / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Event:
    def record(self) -> None:
        self.at = time.perf_counter()

    def synchronize(self) -> None:
        pass


def numpy_as_cupy() -> types.ModuleType:
    fake = types.ModuleType("cupy")
    fake.__version__ = "numpy-stand-in"
    fake.asarray, fake.asnumpy = np.asarray, np.asarray
    fake.float32, fake.empty_like, fake.matmul = np.float32, np.empty_like, np.matmul
    rng = np.random.default_rng(0)
    fake.random = types.SimpleNamespace(
        standard_normal=lambda shape, dtype: rng.standard_normal(shape, dtype=dtype)
    )
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1, getDeviceProperties=lambda index: {"name": b"stand-in"}
    )
    fake.cuda = types.SimpleNamespace(
        runtime=runtime,
        Event=_Event,
        get_elapsed_time=lambda start, stop: 1e3 * (stop.at - start.at),
    )
    return fake


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_without_cupy_it_says_so_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_gpu_check().main([]) == 0
    assert "CuPy is not installed" in capsys.readouterr().out


def test_its_checks_and_report_run_end_to_end(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "cupy", numpy_as_cupy())
    out = tmp_path / "gpu.json"
    code = load_gpu_check().main(
        ["--repeats", "3", "--batches", "8", "16", "--peak-n", "64", "--json", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "gradients CuPy vs NumPy, 64 cases: PASS" in printed
    assert "GradientWorker gpu vs cpu" in printed and "PASS" in printed
    report = json.loads(out.read_text())
    assert report["gradients_ok"] is True
    assert [row["impl"] for row in report["rows"]] == ["cupy_gemm_peak", "engine", "engine"]
    assert all(row["step_ms"] > 0 for row in report["rows"])
