"""bench/backprop.py: its implementations compute the same step, and a tiny run reports."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "backprop.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_backprop", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_engine_naive_and_torch_take_the_same_sgd_steps(bench) -> None:
    engine, naive = bench.engine_step(16), bench.naive_step(16)
    torch_fn = bench.torch_step(16)
    for _ in range(3):
        engine()
        naive()
        if torch_fn is not None:
            torch_fn()
    np.testing.assert_allclose(engine.theta, naive.theta, rtol=1e-4, atol=1e-6)
    assert engine.losses[0] == pytest.approx(naive.losses[0], rel=1e-5)  # the same work
    if torch_fn is not None:
        np.testing.assert_allclose(torch_fn.current_theta(), engine.theta, rtol=1e-4, atol=1e-6)


def test_gemm_flops_count_the_steps_products(bench) -> None:
    assert bench.gemm_flops(bench.SIZES, 256) == 256 * 2 * 605_696


def test_a_tiny_run_prints_the_table_and_writes_rows(bench, tmp_path: Path, capsys) -> None:
    out = tmp_path / "rows.json"
    bench.PEAK_N = 256  # keep the peak GEMM small here
    code = bench.main(
        ["--batches", "8", "--threads", "1", "--rounds", "2", "--steps", "1", "--json", str(out)]
    )
    assert code == 0
    table = capsys.readouterr().out
    assert "engine" in table and "numpy_gemm_peak" in table
    rows = json.loads(out.read_text())
    keys = {"impl", "threads", "batch", "step_ms", "gflops", "fraction_of_peak", "speedup_vs_torch"}
    assert all(set(row) == keys for row in rows)
    assert {row["impl"] for row in rows} >= {"numpy_gemm_peak", "engine", "numpy_naive"}
