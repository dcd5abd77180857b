"""Sweep specs: defaults, field paths, and every bad spec refused naming its field."""

# ruff: noqa: E501  (the table of bad specs keeps one case a line)

from __future__ import annotations

import pytest

from bptrain.v1 import sweeps_pb2 as spb
from bptrain.v1 import training_pb2 as pb
from services.api.sweep_convert import sweep_spec_from_proto, sweep_spec_to_proto
from services.errors import InvalidSpecError
from services.sweeps.paths import parse
from services.sweeps.spec import SweepSpec


def base() -> pb.JobSpec:
    return pb.JobSpec(
        layers=[
            pb.LayerSpec(units=32, activation="relu"),
            pb.LayerSpec(units=10, activation="identity"),
        ],
        optimizer=pb.OptimizerSpec(kind="adam", learning_rate=0.003),
        batch_size=64,
        epochs=3,
        workers=1,
        dataset=pb.DatasetSpec(name="digits", validation_fraction=0.1),
    )


def lr(**domain) -> spb.SweepParameter:
    return spb.SweepParameter(path="optimizer.learning_rate", **domain)


def sweep(*parameters: spb.SweepParameter, **fields) -> spb.SweepSpec:
    return spb.SweepSpec(
        base=base(),
        parameters=parameters or [lr(log_uniform=spb.Range(low=1e-4, high=1e-2))],
        **fields,
    )


def test_defaults_follow_the_task_and_the_parameters() -> None:
    spec = sweep_spec_from_proto(sweep())
    assert (spec.metric, spec.direction, spec.sampler) == (
        "validation_accuracy",
        "maximize",
        "random",
    )
    assert (spec.max_trials, spec.parallel_trials, spec.seed, spec.scheduler.kind) == (
        16,
        2,
        0,
        "none",
    )
    grid = sweep_spec_from_proto(
        sweep(
            lr(grid=spb.Values(numbers=[0.001, 0.01])),
            spb.SweepParameter(
                path="layers[0].activation", grid=spb.Values(texts=["relu", "tanh"])
            ),
        )
    )
    assert (grid.sampler, grid.max_trials) == ("grid", 4)  # a full grid's size
    loss = sweep_spec_from_proto(sweep(metric="validation_loss"))
    assert loss.direction == "minimize"


def test_a_spec_survives_the_proto_and_the_store_unchanged() -> None:
    message = sweep(
        lr(log_uniform=spb.Range(low=1e-4, high=1e-2)),
        spb.SweepParameter(path="layers[0].units", choice=spb.Values(numbers=[16, 32, 64])),
        spb.SweepParameter(path="layers[0].dropout", uniform=spb.Range(low=0.0, high=0.5)),
        spb.SweepParameter(path="batch_size", integer=spb.IntRange(low=16, high=128, step=16)),
        scheduler=spb.SweepScheduler(kind="asha", grace_period=2, reduction_factor=4),
        seed=7,
    )
    spec = sweep_spec_from_proto(message)
    assert sweep_spec_from_proto(sweep_spec_to_proto(spec)) == spec
    assert SweepSpec.from_dict(spec.to_dict()) == spec


def test_a_trial_spec_is_the_base_with_each_path_set() -> None:
    spec = sweep_spec_from_proto(sweep())
    values = {
        parse("optimizer.learning_rate"): 0.02,
        parse("layers[0].units"): 48.0,  # a number the API sends as a double
        parse("layers[0].dropout"): 0.25,
        parse("dataset.validation_fraction"): 0.2,
    }
    trial = spec.trial_spec(values, name="s/trial-0")
    assert trial.optimizer.learning_rate == 0.02
    assert trial.layers[0].units == 48 and isinstance(trial.layers[0].units, int)
    assert trial.layers[0].dropout == 0.25
    assert trial.dataset.validation_fraction == 0.2
    assert trial.name == "s/trial-0" and trial.layers[1] == spec.base.layers[1]


BAD = [
    (sweep(spb.SweepParameter(path="optimizer.lr", uniform=spb.Range(low=0, high=1))), r"^parameters\[0\]\.path unknown field 'optimizer.lr': optimizer has .*learning_rate"),
    (sweep(spb.SweepParameter(path="name", choice=spb.Values(texts=["a"]))), r"^parameters\[0\]\.path unknown field 'name'"),
    (sweep(spb.SweepParameter(path="dataset.name", choice=spb.Values(texts=["digits"]))), r"^parameters\[0\]\.path unknown field 'dataset.name'"),
    (sweep(spb.SweepParameter(path="layers.units", choice=spb.Values(numbers=[1]))), r"^parameters\[0\]\.path only layers takes an index"),
    (sweep(spb.SweepParameter(path="", choice=spb.Values(numbers=[1]))), r"^parameters\[0\]\.path must be a field path"),
    (sweep(spb.SweepParameter(path="layers[5].units", choice=spb.Values(numbers=[8]))), r"^parameters\[0\] layers\[5\]\.units = 8\.0: path layers\[5\]\.units: the base spec has 2 layers"),
    (sweep(spb.SweepParameter(path="layers[1].dropout", uniform=spb.Range(low=0, high=0.5))), r"^parameters\[0\] layers\[1\]\.dropout = "),
    (sweep(spb.SweepParameter(path="layers[0].units", uniform=spb.Range(low=8, high=64))), r"^parameters\[0\]\.uniform layers\[0\]\.units takes integers: use integer, choice or grid"),
    (sweep(spb.SweepParameter(path="layers[0].activation", uniform=spb.Range(low=0, high=1))), r"^parameters\[0\]\.uniform layers\[0\]\.activation takes texts: use choice or grid"),
    (sweep(spb.SweepParameter(path="layers[0].activation", choice=spb.Values(numbers=[1]))), r"^parameters\[0\] layers\[0\]\.activation = 1\.0: path layers\[0\]\.activation takes texts"),
    (sweep(spb.SweepParameter(path="layers[0].activation", choice=spb.Values(texts=["relu", "swish"]))), r"^parameters\[0\] layers\[0\]\.activation = 'swish': layers\[0\]\.activation must be one of"),
    (sweep(spb.SweepParameter(path="batch_size", integer=spb.IntRange(low=0, high=64))), r"^parameters\[0\] batch_size = 0: batch_size"),
    (sweep(lr(uniform=spb.Range(low=0.1, high=0.1))), r"^parameters\[0\]\.uniform\.high must be > low"),
    (sweep(lr(log_uniform=spb.Range(low=0, high=0.1))), r"^parameters\[0\]\.log_uniform\.low must be > 0"),
    (sweep(lr(log_uniform=spb.Range(low=-1, high=0.1))), r"^parameters\[0\]\.log_uniform\.low must be > 0"),
    (sweep(lr(uniform=spb.Range(low=float("nan"), high=0.1))), r"^parameters\[0\]\.uniform\.low must be a finite number"),
    (sweep(lr(choice=spb.Values())), r"^parameters\[0\]\.choice\.values must hold 1 to 64 values, got 0"),
    (sweep(lr(choice=spb.Values(numbers=[0.1, 0.1]))), r"^parameters\[0\]\.choice\.values must not repeat"),
    (sweep(lr(choice=spb.Values(numbers=[0.1], texts=["x"]))), r"^parameters\[0\]\.choice takes numbers or texts, not both"),
    (sweep(spb.SweepParameter(path="optimizer.learning_rate")), r"^parameters\[0\] needs one of grid, choice"),
    (sweep(lr(uniform=spb.Range(low=0.001, high=0.01)), lr(uniform=spb.Range(low=0.001, high=0.01))), r"^parameters\[1\]\.path repeats optimizer\.learning_rate"),
    (spb.SweepSpec(base=base()), r"^parameters must hold 1 to 16 parameters, got 0"),
    (spb.SweepSpec(parameters=[lr(uniform=spb.Range(low=0.001, high=0.01))]), r"^base is required"),
    (sweep(max_trials=0), r"^max_trials must be >= 1, got 0"),
    (sweep(max_trials=-3), r"^max_trials must be >= 1"),
    (sweep(parallel_trials=0), r"^parallel_trials must be >= 1"),
    (sweep(parallel_trials=1000), r"^parallel_trials must be <= 32"),
    (sweep(seed=-1), r"^seed must be >= 0"),
    (sweep(metric="accuracy"), r"^metric must be one of"),
    (sweep(direction="up"), r"^direction must be one of maximize, minimize"),
    (sweep(sampler="bayes"), r"^sampler must be one of random, tpe, grid"),
    (sweep(scheduler=spb.SweepScheduler(kind="hyperband")), r"^scheduler\.kind must be one of none, asha"),
    (sweep(scheduler=spb.SweepScheduler(kind="asha", reduction_factor=1)), r"^scheduler\.reduction_factor must be >= 2"),
    (sweep(scheduler=spb.SweepScheduler(kind="asha", grace_period=0)), r"^scheduler\.grace_period must be >= 1"),
    (sweep(lr(grid=spb.Values(numbers=[0.01])), spb.SweepParameter(path="l2", uniform=spb.Range(low=0, high=0.1)), sampler="grid"), r"^parameters\[1\] the grid sampler needs every parameter to be grid"),
    (sweep(lr(grid=spb.Values(numbers=[0.01])), sampler="random"), r"^parameters\[0\]\.grid needs every parameter to be grid"),
    (sweep(lr(grid=spb.Values(numbers=[0.01, 0.1])), max_trials=3), r"^max_trials must be <= the grid's 2 points, got 3"),
    (spb.SweepSpec(base=pb.JobSpec(), parameters=[lr(uniform=spb.Range(low=0.001, high=0.01))]), r"^base\.dataset\.name is required"),
]  # fmt: skip


@pytest.mark.parametrize(("message", "pattern"), BAD, ids=[p[:40] for _, p in BAD])
def test_a_bad_sweep_spec_names_its_field(message: spb.SweepSpec, pattern: str) -> None:
    with pytest.raises(InvalidSpecError, match=pattern):
        sweep_spec_from_proto(message)


def test_a_sweep_metric_needs_evaluations_and_fits_the_task() -> None:
    no_validation = sweep()
    no_validation.base.dataset.validation_fraction = 0
    with pytest.raises(InvalidSpecError, match=r"^metric .*validation_fraction must be > 0"):
        sweep_spec_from_proto(no_validation)
    regression = sweep(metric="validation_accuracy")
    regression.base.dataset.name = "synthetic/regression"
    regression.base.loss = "mse"
    regression.base.layers[-1].units = 1
    with pytest.raises(InvalidSpecError, match=r"^metric validation_accuracy applies only"):
        sweep_spec_from_proto(regression)


def test_a_trials_runner_drains_sooner_than_a_plain_jobs() -> None:
    from pathlib import Path

    from services.jobs.manager import TRIAL_DRAIN_PERIOD_S
    from services.jobs.run_status import DRAIN_PERIOD_S
    from services.jobs.runner_launch import JobSetup, runner_options
    from services.jobs.runner_options import RunnerOptions

    setup = JobSetup(
        weights_path=Path("w.npz"),
        checkpoint_dir=Path("c"),
        datasets_dir=Path("d"),
        worker_cpus=1.0,
        drain_period_s=TRIAL_DRAIN_PERIOD_S,
    )
    assert runner_options(setup, resume_at_most=0).drain_period_s == TRIAL_DRAIN_PERIOD_S
    assert TRIAL_DRAIN_PERIOD_S < DRAIN_PERIOD_S == RunnerOptions().drain_period_s
    for bad in (0.0, 0.01, 6.0, float("nan")):
        with pytest.raises(ValueError, match="drain_period_s must be in"):
            RunnerOptions(drain_period_s=bad)
