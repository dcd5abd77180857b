"""bench/distributed.py: its throughput arithmetic, and a quick run's table and JSON rows."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from services.jobs.training_data import prepare_data

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "distributed.py"
REQUIRED = {"impl", "mode", "workers", "shards", "batch", "samples_per_s", "efficiency_vs_single"}
QUICK_RUN_TIMEOUT_S = 240  # about 60 s on a quiet 2-core machine


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_distributed", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_throughput_is_timed_from_the_end_of_the_warm_up(bench) -> None:
    # steps end at 1, 2, 4, 5 s: warm-up is the first; 3 timed steps of 100 samples in 4 s
    records = [
        bench.StepRecord(end, 100, compute_s=0.5, bytes_moved=10) for end in (1.0, 2.0, 4.0, 5.0)
    ]
    measurement = bench.summarise(records, warmup=1)
    assert measurement.samples_per_s == pytest.approx(300 / 4)
    assert measurement.step_ms_median == pytest.approx(1000.0)  # of 1, 2, 1 s
    assert measurement.comm_fraction == pytest.approx(0.5)  # median of 0.5, 0.75, 0.5
    assert measurement.bytes_per_step == 10
    assert measurement.timed_steps == 3
    with pytest.raises(bench.RowFailed):
        bench.summarise(records[:2], warmup=1)


def test_a_goal_row_is_the_pair_of_median_ratio_and_keeps_every_ratio(bench, monkeypatch) -> None:
    # Three paired runs: references 100, 100, 50 samples/s; the row 80, 100, 45: ratios
    # 0.8, 1.0, 0.9 -> the third pair (0.9), whatever order the runs came in.
    references = iter([100.0, 100.0, 50.0])
    measured = iter([80.0, 100.0, 45.0])

    def fake(throughput: float):
        return bench.Measurement(throughput, step_ms_median=1000 / throughput, timed_steps=2)

    monkeypatch.setattr(bench, "measure_single", lambda *a: fake(next(references)))
    monkeypatch.setattr(bench, "measure", lambda *a: fake(next(measured)))
    settings = bench.Settings(warmup=1, steps=2, samples=1000, repeats=3)
    reference, measurement, ratios = bench.measure_paired(
        bench.Plan("bptrain", "bsp", 2), None, None, settings
    )
    assert ratios == pytest.approx([0.8, 1.0, 0.9])
    assert (reference.samples_per_s, measurement.samples_per_s) == (50.0, 45.0)


def test_the_rows_without_ray_run_before_ray_starts_and_keep_their_place(
    bench, monkeypatch
) -> None:
    import ray

    events: list[str] = []

    def measured(plan, *args):
        events.append(f"{plan.impl}, Ray {'up' if 'ray' in events else 'down'}")
        return bench.Row(plan.impl, plan.mode, plan.workers, plan.shards, plan.batch, plan.model)

    def start_ray(num_cpus: int) -> bool:
        events.append("ray")
        return True  # started here: run() shuts it down

    monkeypatch.setattr(bench, "training_rows", lambda samples: (None, None))
    monkeypatch.setattr(bench, "start_ray", start_ray)
    monkeypatch.setattr(bench, "log_ray_costs", lambda: None)
    monkeypatch.setattr(bench, "measure_row", measured)
    monkeypatch.setattr(ray, "shutdown", lambda: events.append("shutdown"))
    plans = (
        bench.Plan("single", "sgd", 1),
        bench.Plan("bptrain", "bsp", 2),
        bench.Plan("loop_no_ray", "bsp", 2),
        bench.Plan("single", "sgd", 1, model="big"),
    )
    rows = bench.run(bench.Settings(warmup=1, steps=2, samples=100, plans=plans))
    assert events == [
        "single, Ray down",
        "loop_no_ray, Ray down",
        "single, Ray down",
        "ray",
        "bptrain, Ray up",
        "shutdown",
    ]
    assert [(row.impl, row.model) for row in rows] == [(plan.impl, plan.model) for plan in plans]


def goal_row(bench, impl: str, mode: str, workers: int, efficiency: float, runs=None):
    """A measured row at `efficiency` against a reference of 1,000 samples/s."""
    return bench.Row(
        impl,
        mode,
        workers,
        1,
        256 * workers,
        samples_per_s=1000.0 * efficiency,
        efficiency_vs_single=efficiency,
        efficiency_median_step=efficiency,
        reference_samples_per_s=1000.0,
        reference_step_ms=1.0,
        efficiency_runs=runs,
    )


def test_the_goals_compare_with_torchtrainer_and_show_every_run(bench) -> None:
    def row(*args):
        return goal_row(bench, *args)

    rows = [
        row("single", "sgd", 1, 1.0, None),
        row("bptrain", "bsp", 1, 0.95, [0.94, 0.95, 0.96]),
        row("bptrain", "bsp", 2, 1.8, [1.7, 1.8, 1.9]),
        row("bptrain", "asp", 2, 1.6, None),
        row("bptrain", "ssp", 2, 1.75, None),
        row("ray_train_torch", "ddp", 1, 0.5, [0.4, 0.5, 0.6]),
        row("ray_train_torch", "ddp", 2, 1.0, [0.9, 1.0, 1.1]),
    ]
    goals = bench.format_goals(rows).splitlines()
    assert goals[1].endswith(
        "0.95x (bptrain bsp 1w/1s, 950 vs 1000 samples/s; from median steps 0.95x; "
        "runs 0.94/0.95/0.96) met"
    )
    assert goals[2].startswith("  2-worker bptrain bsp >= 1.70x single: 1.80x")
    assert goals[2].endswith(" met")
    assert goals[3].endswith("1.60x (from median steps 1.60x) NOT met")  # asp
    assert goals[4].endswith("1.75x (from median steps 1.75x) met")  # ssp
    assert "TorchTrainer, 1 worker(s): 1.90x" in goals[5] and goals[5].endswith(
        "runs 0.94/0.95/0.96; theirs 0.40/0.50/0.60) NOT met"
    )
    assert (
        "TorchTrainer, 2 worker(s): 1.80x" in goals[6]
        and "raw 1800 vs 1000 samples/s = 1.80x" in goals[6]
    )
    assert goals[6].endswith("theirs 0.90/1.00/1.10) NOT met")


def test_the_goals_end_with_the_loop_without_ray_and_the_share_the_service_reaches(
    bench,
) -> None:
    def row(*args):
        return goal_row(bench, *args)

    rows = [
        row("single", "sgd", 1, 1.0),
        row("bptrain", "bsp", 2, 1.5),
        row("loop_no_ray", "bsp", 2, 1.6, [1.5, 1.6, 1.7]),
        row("loop_no_ray", "asp", 2, 1.9),
    ]
    lines = bench.format_goals(rows).splitlines()
    start = lines.index("the same step loop without Ray, this run (context, not a goal)")
    assert lines[start + 1 :] == [
        "  bsp 2w: 1.60x single (from median steps 1.60x; runs 1.50/1.60/1.70); "
        "bptrain 1.50x, 94 % of it",
        "  asp 2w: 1.90x single (from median steps 1.90x)",  # no bptrain asp row ran
    ]
    assert "context" not in bench.format_goals(rows[:2])  # no loop_no_ray row: no context


def test_a_step_of_the_plain_loop_ends_when_every_worker_finished_it(bench) -> None:
    ends = [
        bench.StepEnd(0, 1, 10.0, 512),
        bench.StepEnd(1, 1, 10.5, 512),
        bench.StepEnd(0, 2, 11.0, 512),
        bench.StepEnd(1, 2, 11.2, 512),
        bench.StepEnd(0, 3, 12.0, 512),  # worker 1 never finished step 3
    ]
    bsp = bench.step_records(ends, workers=2, is_async=False)
    assert [(r.end_s, r.samples) for r in bsp] == [(0.5, 512), (pytest.approx(1.2), 512)]
    pushes = [bench.StepEnd(w, step, 10.0 + step + w, 256) for step in (1, 2) for w in (0, 1)]
    asp = bench.step_records(pushes, workers=2, is_async=True)
    assert [(r.end_s, r.samples) for r in asp] == [(1.0, 512), (2.0, 512)]  # pushes summed


@pytest.mark.parametrize("mode", ["bsp", "asp"])
def test_the_plain_loop_trains_every_step_of_every_worker_without_ray(bench, mode) -> None:
    settings = bench.Settings(warmup=2, steps=8, samples=3000)
    spec = bench.bptrain_spec(bench.Plan("loop_no_ray", mode, 2), settings)
    ends, profiles = bench.run_plain_loop(spec, prepare_data(spec), steps=10)
    every = [(worker, step) for worker in (0, 1) for step in range(1, 11)]
    assert sorted((e.worker, e.step) for e in ends) == every
    assert [p["steps"] for p in profiles] == [10, 10]
    batch = 512 if mode == "bsp" else 256  # bsp: the step's, over both workers
    assert all(0 < e.samples <= batch for e in ends)  # an epoch's last batch may be short
    if mode == "bsp":  # every worker reports the same step
        assert {(e.step, e.samples) for e in ends if e.worker == 0} == {
            (e.step, e.samples) for e in ends if e.worker == 1
        }


def test_a_plain_worker_that_fails_fails_the_row_with_its_reason_and_leaves_no_process(
    bench,
) -> None:
    settings = bench.Settings(warmup=2, steps=8, samples=3000)
    spec = bench.bptrain_spec(bench.Plan("loop_no_ray", "bsp", 2), settings)
    data = prepare_data(spec)
    too_few = dataclasses.replace(data, X_train=data.X_train[:, :5])  # not the model's 784
    with pytest.raises(bench.LoopFailed, match=r"plain worker \d: ValueError"):
        bench.run_plain_loop(spec, too_few, steps=10)
    assert not multiprocessing.active_children()


def test_only_the_goal_rows_of_the_base_model_are_repeated(bench) -> None:
    settings = bench.Settings(warmup=1, steps=2, samples=1000, repeats=3)
    assert bench.repeats_of(bench.Plan("bptrain", "asp", 2), settings) == 3
    assert bench.repeats_of(bench.Plan("ray_train_torch", "ddp", 1), settings) == 3
    assert bench.repeats_of(bench.Plan("bptrain", "bsp", 2, model="big"), settings) == 1
    assert bench.repeats_of(bench.Plan("naive_ray_ps", "sync", 2), settings) == 1
    assert bench.repeats_of(bench.Plan("single", "sgd", 1), settings) == 1


def test_a_spec_the_service_rejects_makes_the_row_unavailable(bench) -> None:
    settings = bench.Settings(warmup=1, steps=2, samples=1000)
    with pytest.raises(bench.Unavailable, match="consistency"):
        bench.bptrain_spec(bench.Plan("bptrain", "no-such-mode", 2), settings)
    spec = bench.bptrain_spec(bench.Plan("bptrain", "bsp", 2), settings)
    assert (spec.batch_size, spec.steps, spec.workers) == (512, 3, 2)
    assert spec.sizes == list(bench.SIZES)


def test_the_makefile_quick_target_runs_the_quick_bench(tmp_path: Path) -> None:
    """`make bench-distributed-quick` with a recording interpreter (and a set-up stamp
    that is not remade): it runs the quick bench, without the host's BLAS overrides."""
    calls, python, stamp = tmp_path / "calls", tmp_path / "python", tmp_path / "stamp"
    python.write_text('#!/bin/sh\nprintf "%s\\n" "$*" "${OPENBLAS_CORETYPE-unset}" > "$CALLS"\n')
    python.chmod(0o755)
    done = subprocess.run(
        ["make", "-s", "-o", stamp, f"STAMP={stamp}", f"PY={python}", "bench-distributed-quick"],
        cwd=ROOT,
        env={**os.environ, "CALLS": str(calls), "OPENBLAS_CORETYPE": "Haswell"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines() == ["bench/distributed.py --quick", "unset"]


@pytest.mark.slow
@pytest.mark.timeout(QUICK_RUN_TIMEOUT_S + 30)
def test_the_quick_run_reports_every_row(bench, tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "RAY_ADDRESS")
    }
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=QUICK_RUN_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())
    assert all(set(row) >= REQUIRED for row in rows)

    # Every planned row is there once, measured or saying why not.
    planned = [(p.impl, p.mode, p.workers, p.shards) for p in bench.default_plans(quick=True)]
    assert [(r["impl"], r["mode"], r["workers"], r["shards"]) for r in rows] == planned
    for row in rows:
        assert row["batch"] == 256 * row["workers"]
        if row["status"] == "ok":
            assert math.isfinite(row["samples_per_s"]) and row["samples_per_s"] > 0
            assert row["step_ms_median"] > 0 and row["timed_steps"] == 15
        else:
            assert row["status"] in ("unavailable", "failed")
            assert row["samples_per_s"] is None and row["efficiency_vs_single"] is None
            assert row["reason"] and f"{row['status']}: {row['reason']}" in done.stdout

    (single,) = [r for r in rows if r["impl"] == "single"]
    assert single["status"] == "ok" and single["efficiency_vs_single"] == pytest.approx(1.0)
    for row in rows:
        if row["status"] == "ok":  # each row against the reference run just before it
            assert row["reference_samples_per_s"] > 0 and row["reference_step_ms"] > 0
            expected = row["samples_per_s"] / row["reference_samples_per_s"]
            assert row["efficiency_vs_single"] == pytest.approx(expected)
            per_median_step = row["batch"] / row["step_ms_median"]
            expected = per_median_step / (256 / row["reference_step_ms"])
            assert row["efficiency_median_step"] == pytest.approx(expected)
            assert 0 <= row["steal_fraction"] <= 1

    # What works today must run: the naive parameter server and bptrain's bsp.
    by_key = {(r["impl"], r["mode"], r["workers"]): r for r in rows}
    naive = by_key[("naive_ray_ps", "sync", 2)]
    assert naive["status"] == "ok"
    theta_bytes = 4 * sum((a + 1) * b for a, b in itertools.pairwise(bench.SIZES))
    assert naive["bytes_per_step"] == 2 * theta_bytes * 2
    assert 0 <= naive["comm_fraction"] <= 1
    for workers in (1, 2):
        assert by_key[("bptrain", "bsp", workers)]["status"] == "ok"
    assert by_key[("loop_no_ray", "bsp", 2)]["status"] == "ok"  # the service's loop, no Ray
    if sys.platform == "linux":  # how long each step loop waited for a CPU, per step
        # A mean over every step, so under load it may pass the median step: no upper bound.
        for row in (single, by_key[("bptrain", "bsp", 1)], by_key[("bptrain", "bsp", 2)]):
            preempted = row["breakdown"]["preempted"]
            assert math.isfinite(preempted) and preempted >= 0
    # --quick skips TorchTrainer, and says so rather than dropping the rows.
    for workers in (1, 2):
        torch_row = by_key[("ray_train_torch", "ddp", workers)]
        assert torch_row["status"] == "unavailable" and "--quick" in torch_row["reason"]

    assert "goals" in done.stdout
    assert re.search(r"1-worker bptrain bsp >= 0\.90x single: [\d.]+x .*(met|NOT met)", done.stdout)
    assert re.search(r"2-worker bptrain bsp >= 1\.70x single: [\d.]+x .*(met|NOT met)", done.stdout)
