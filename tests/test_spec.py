"""Job specs: proto → validated domain spec (defaults, every field error named), and back."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bptrain.v1 import training_pb2 as pb
from services.api.convert import (
    job_to_proto,
    point_to_proto,
    spec_from_proto,
    spec_to_proto,
    state_from_proto,
)
from services.datasets import DatasetOptions
from services.errors import InvalidSpecError
from services.jobs.records import JobRecord, JobState, MetricPoint
from services.jobs.schedule_spec import ScheduleSpec
from services.jobs.spec import DatasetSpec, JobSpec, LayerSpec
from services.paramserver.optimizers import OptimizerConfig


def minimal_message() -> pb.JobSpec:
    """The smallest valid spec: one logits layer on digits (64 inputs, 10 classes)."""
    return pb.JobSpec(
        layers=[pb.LayerSpec(units=10, activation="identity")],
        dataset=pb.DatasetSpec(name="digits"),
    )


def full_message() -> pb.JobSpec:
    """A spec that sets every field to something other than its default."""
    return pb.JobSpec(
        name="blobs-mlp",
        layers=[
            pb.LayerSpec(units=16, activation="tanh"),
            pb.LayerSpec(units=8, activation="relu"),
            pb.LayerSpec(units=4, activation="identity"),
        ],
        loss="softmax_cross_entropy",
        optimizer=pb.OptimizerSpec(
            kind="adam",
            learning_rate=0.003,
            momentum=0.5,
            beta1=0.8,
            beta2=0.99,
            epsilon=1e-6,
            weight_decay=0.0001,
        ),
        batch_size=32,
        epochs=3,
        steps=7,
        dataset=pb.DatasetSpec(
            name="synthetic/blobs",
            validation_fraction=0.25,
            samples=500,
            features=5,
            classes=4,
            noise=0.3,
        ),
        workers=4,
        consistency="bsp",
        seed=11,
        eval_every=5,
    )


def invalid_field(message: pb.JobSpec) -> InvalidSpecError:
    with pytest.raises(InvalidSpecError) as caught:
        spec_from_proto(message)
    return caught.value


# --- defaults ------------------------------------------------------------------------------


def test_minimal_spec_gets_every_documented_default() -> None:
    spec = spec_from_proto(minimal_message())

    assert spec.name == "job"
    assert spec.layers == (LayerSpec(units=10, activation="identity"),)
    assert spec.loss == "softmax_cross_entropy"
    assert spec.optimizer == OptimizerConfig(
        kind="sgd",
        learning_rate=0.01,
        momentum=0.9,
        beta1=0.9,
        beta2=0.999,
        epsilon=1e-8,
        weight_decay=0.0,
    )
    assert spec.batch_size == 64
    assert spec.epochs == 10
    assert spec.steps is None
    assert spec.workers == 2
    assert spec.consistency == "bsp"
    assert spec.seed == 0
    assert spec.eval_every is None
    assert spec.dataset.name == "digits"
    assert spec.dataset.validation_fraction == 0.1
    assert spec.dataset.options == DatasetOptions(
        samples=2000, features=2, classes=3, noise=0.1, seed=0
    )


def test_set_fields_override_the_defaults() -> None:
    spec = spec_from_proto(full_message())

    assert spec.name == "blobs-mlp"
    assert spec.optimizer == OptimizerConfig(
        kind="adam",
        learning_rate=0.003,
        momentum=0.5,
        beta1=0.8,
        beta2=0.99,
        epsilon=1e-6,
        weight_decay=0.0001,
    )
    assert (spec.batch_size, spec.epochs, spec.steps, spec.workers) == (32, 3, 7, 4)
    assert (spec.seed, spec.eval_every) == (11, 5)
    assert spec.dataset.validation_fraction == 0.25
    # The job's seed also seeds the data set generator.
    assert spec.dataset.options == DatasetOptions(
        samples=500, features=5, classes=4, noise=0.3, seed=11
    )
    assert spec.sizes == [5, 16, 8, 4]
    assert spec.activations == ["tanh", "relu", "identity"]


def test_explicit_zero_weight_decay_and_validation_fraction_are_accepted() -> None:
    message = minimal_message()
    message.optimizer.weight_decay = 0.0
    message.dataset.validation_fraction = 0.0

    spec = spec_from_proto(message)

    assert spec.optimizer.weight_decay == 0.0
    assert spec.dataset.validation_fraction == 0.0


def test_parameter_count_counts_weights_and_biases() -> None:
    spec = spec_from_proto(full_message())  # sizes 5 → 16 → 8 → 4

    assert spec.parameter_count == (5 * 16 + 16) + (16 * 8 + 8) + (8 * 4 + 4)


# --- bad specs -----------------------------------------------------------------------------


def _set(path: str, value: object):
    """An edit of minimal_message() that sets one (dotted) field."""

    def edit(message: pb.JobSpec) -> None:
        *parents, name = path.split(".")
        target = message
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)

    return edit


def _layers(*layers: tuple[int, str]):
    def edit(message: pb.JobSpec) -> None:
        del message.layers[:]
        message.layers.extend(pb.LayerSpec(units=u, activation=a) for u, a in layers)

    return edit


def _both(*edits):
    def edit(message: pb.JobSpec) -> None:
        for one in edits:
            one(message)

    return edit


BAD_SPECS = [
    pytest.param(
        _set("optimizer.learning_rate", -1.0),
        "optimizer.learning_rate",
        "must be > 0",
        id="negative-learning-rate",
    ),
    pytest.param(
        _set("optimizer.learning_rate", 0.0),
        "optimizer.learning_rate",
        "must be > 0",
        id="zero-learning-rate",
    ),
    pytest.param(_layers(), "layers", "at least one layer", id="zero-layers"),
    pytest.param(
        _layers((10, "swish")), "layers[0].activation", "'swish'", id="unknown-activation"
    ),
    pytest.param(_layers((0, "identity")), "layers[0].units", ">= 1", id="zero-units"),
    pytest.param(
        _set("dataset.name", "imagenet"), "dataset.name", "'imagenet'", id="unknown-dataset"
    ),
    pytest.param(_set("dataset.name", ""), "dataset.name", "is required", id="missing-dataset"),
    pytest.param(_set("batch_size", 0), "batch_size", ">= 1", id="batch-size-zero"),
    pytest.param(_set("workers", 0), "workers", ">= 1", id="workers-zero"),
    pytest.param(
        _both(_set("batch_size", 3), _set("workers", 4)),
        "batch_size",
        "must be >= workers (4)",
        id="batch-smaller-than-workers",
    ),
    pytest.param(
        _layers((32, "relu"), (9, "identity")),
        "layers[1].units",
        "must be 10",
        id="last-units-not-classes",
    ),
    pytest.param(
        _layers((32, "relu"), (10, "relu")),
        "layers[1].activation",
        "must be identity",
        id="last-activation-not-identity",
    ),
    pytest.param(_set("loss", "mse"), "loss", "must be softmax_cross_entropy", id="mse-on-digits"),
    pytest.param(_set("loss", "hinge"), "loss", "'hinge'", id="unknown-loss"),
    pytest.param(
        _both(_set("dataset.name", "synthetic/regression"), _layers((1, "identity"))),
        "loss",
        "must be one of mse, huber",
        id="cross-entropy-on-regression",
    ),
    pytest.param(
        _set("optimizer.kind", "lbfgs"), "optimizer.kind", "'lbfgs'", id="unknown-optimizer"
    ),
    pytest.param(
        _set("staleness", 2), "staleness", "applies only to consistency ssp", id="bsp-staleness"
    ),
    pytest.param(
        _both(_set("consistency", "ssp"), _set("staleness", -1)),
        "staleness",
        ">= 0",
        id="negative-staleness",
    ),
    pytest.param(
        _set("staleness_aware_lr", True),
        "staleness_aware_lr",
        "applies only to consistency asp or ssp",
        id="bsp-staleness-aware-lr",
    ),
    pytest.param(_set("ps_shards", 0), "ps_shards", ">= 1", id="zero-shards"),
    pytest.param(_set("ps_shards", 65), "ps_shards", "<= 64", id="too-many-shards"),
    pytest.param(
        _both(_set("ps_shards", 2), _set("optimizer.clip_norm", 1.0)),
        "ps_shards",
        "must be 1 with optimizer.clip_norm",
        id="shards-with-clipping",
    ),
    pytest.param(_set("compression", "zip"), "compression", "'zip'", id="unknown-compression"),
    pytest.param(
        _set("topk_fraction", 0.1),
        "topk_fraction",
        "applies only to compression topk",
        id="topk-fraction-without-topk",
    ),
    pytest.param(
        _both(_set("compression", "topk"), _set("topk_fraction", 1.5)),
        "topk_fraction",
        "<= 1.0",
        id="topk-fraction-above-one",
    ),
    pytest.param(
        _set("consistency", "gossip"), "consistency", "'gossip'", id="unknown-consistency"
    ),
    pytest.param(_set("seed", -1), "seed", ">= 0", id="negative-seed"),
    pytest.param(_set("epochs", 0), "epochs", ">= 1", id="epochs-zero"),
    pytest.param(_set("steps", 0), "steps", ">= 1", id="steps-zero"),
    pytest.param(_set("eval_every", 0), "eval_every", ">= 1", id="eval-every-zero"),
    pytest.param(
        _set("dataset.validation_fraction", 0.9),
        "dataset.validation_fraction",
        "<= 0.5",
        id="validation-fraction-too-big",
    ),
    pytest.param(
        _set("dataset.validation_fraction", -0.1),
        "dataset.validation_fraction",
        ">= 0",
        id="validation-fraction-negative",
    ),
    pytest.param(
        _both(
            _set("dataset.name", "synthetic/spirals"),
            _set("dataset.features", 3),
            _layers((3, "identity")),
        ),
        "dataset.features",
        "must be 2",
        id="spirals-with-three-features",
    ),
    pytest.param(_set("dataset.samples", 5), "dataset.samples", ">= 10", id="too-few-samples"),
    pytest.param(_set("dataset.noise", -0.5), "dataset.noise", ">= 0", id="negative-noise"),
    pytest.param(
        _layers((8000, "relu"), (8000, "relu"), (10, "identity")),
        "layers",
        "the limit is 50000000",
        id="too-many-parameters",
    ),
    pytest.param(_set("name", "x" * 201), "name", "at most 200", id="name-too-long"),
    pytest.param(
        _set("optimizer.momentum", 1.0), "optimizer.momentum", "must be < 1", id="momentum-one"
    ),
    pytest.param(
        _set("optimizer.learning_rate", float("nan")),
        "optimizer.learning_rate",
        "finite",
        id="nan-learning-rate",
    ),
]


@pytest.mark.parametrize(("edit", "field", "problem"), BAD_SPECS)
def test_bad_spec_raises_invalid_spec_error_naming_the_field(edit, field, problem) -> None:
    message = minimal_message()
    edit(message)

    error = invalid_field(message)

    assert error.field == field
    assert str(error).startswith(f"{field} ")
    assert problem in str(error)


def test_negative_learning_rate_message_names_field_and_value() -> None:
    message = minimal_message()
    message.optimizer.learning_rate = -1.0

    assert str(invalid_field(message)) == "optimizer.learning_rate must be > 0, got -1.0"


def test_a_later_bad_layer_is_named_by_its_index() -> None:
    message = minimal_message()
    message.layers.insert(0, pb.LayerSpec(units=16, activation="relu"))
    message.layers.insert(1, pb.LayerSpec(units=16, activation="swish"))

    assert invalid_field(message).field == "layers[1].activation"


def test_mse_on_regression_with_any_output_activation_is_valid() -> None:
    message = pb.JobSpec(
        layers=[pb.LayerSpec(units=4, activation="relu"), pb.LayerSpec(units=1, activation="tanh")],
        loss="mse",
        dataset=pb.DatasetSpec(name="synthetic/regression", features=3),
    )

    spec = spec_from_proto(message)

    assert spec.sizes == [3, 4, 1]
    assert spec.loss == "mse"


def test_batch_size_equal_to_workers_is_valid() -> None:
    message = minimal_message()
    message.batch_size = 4
    message.workers = 4

    assert spec_from_proto(message).batch_size == 4


def test_domain_spec_rejects_bad_fields_without_protobuf() -> None:
    with pytest.raises(InvalidSpecError) as caught:
        JobSpec(
            layers=(LayerSpec(units=10, activation="identity"),),
            dataset=DatasetSpec(name="digits"),
            workers=65,
        )

    assert caught.value.field == "workers"


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("make", [minimal_message, full_message], ids=["minimal", "full"])
def test_spec_to_proto_round_trips_to_an_equal_spec(make) -> None:
    spec = spec_from_proto(make())

    assert spec_from_proto(spec_to_proto(spec)) == spec


def test_spec_to_proto_fills_in_every_default() -> None:
    message = spec_to_proto(spec_from_proto(minimal_message()))

    assert message.name == "job"
    assert message.loss == "softmax_cross_entropy"
    assert message.optimizer.kind == "sgd"
    assert message.optimizer.HasField("learning_rate")
    assert message.optimizer.learning_rate == 0.01
    assert (message.batch_size, message.epochs, message.workers) == (64, 10, 2)
    assert message.HasField("seed") and message.seed == 0
    assert message.dataset.HasField("validation_fraction")
    assert message.dataset.validation_fraction == pytest.approx(0.1)
    assert message.consistency == "bsp"
    # Unset optional fields without a default stay unset (epochs rule, once per epoch).
    assert not message.HasField("steps")
    assert not message.HasField("eval_every")


def test_spec_to_dict_round_trips_through_json() -> None:
    spec = spec_from_proto(full_message())

    restored = JobSpec.from_dict(json.loads(json.dumps(spec.to_dict())))

    assert restored == spec
    assert isinstance(restored.layers, tuple)
    assert isinstance(restored.dataset.options, DatasetOptions)


def test_spec_from_dict_validates_again() -> None:
    data = spec_from_proto(minimal_message()).to_dict()
    data["optimizer"]["learning_rate"] = -2.0

    with pytest.raises(InvalidSpecError) as caught:
        JobSpec.from_dict(data)

    assert caught.value.field == "optimizer.learning_rate"  # the whole path


# --- jobs, points, states ------------------------------------------------------------------


def make_point(**changes) -> MetricPoint:
    fields = {
        "step": 3,
        "epoch": 1,
        "loss": 0.75,
        "samples_per_second": 1200.0,
        "learning_rate": 0.01,
        "elapsed_seconds": 2.5,
        "gradient_norms": (0.5, 0.25),
    }
    return MetricPoint(**{**fields, **changes})


def test_point_to_proto_copies_every_field() -> None:
    point = make_point(validation_loss=0.8, validation_accuracy=0.9)

    message = point_to_proto(point)

    assert (message.step, message.epoch) == (3, 1)
    assert message.loss == 0.75
    assert message.samples_per_second == 1200.0
    assert message.learning_rate == 0.01
    assert message.elapsed_seconds == 2.5
    assert list(message.gradient_norms) == [0.5, 0.25]
    assert message.validation_loss == 0.8
    assert message.validation_accuracy == 0.9


def test_point_without_validation_leaves_those_fields_unset() -> None:
    message = point_to_proto(make_point())

    assert not message.HasField("validation_loss")
    assert not message.HasField("validation_accuracy")


def test_point_with_zero_validation_values_sets_them() -> None:
    message = point_to_proto(make_point(validation_loss=0.0, validation_accuracy=0.0))

    assert message.HasField("validation_loss")
    assert message.HasField("validation_accuracy")


def test_job_to_proto_of_a_finished_job() -> None:
    spec = spec_from_proto(full_message())
    point = make_point(step=7)
    record = JobRecord(
        job_id="job-1",
        spec=spec,
        state=JobState.FAILED,
        reason="worker died",
        created_at=1_700_000_000.25,
        started_at=1_700_000_001.5,
        finished_at=1_700_000_010.0,
        total_steps=7,
        step=7,
        latest=point,
    )

    message = job_to_proto(record)

    assert message.job_id == "job-1"
    assert message.name == "blobs-mlp"
    assert message.state == pb.FAILED
    assert message.reason == "worker died"
    assert spec_from_proto(message.spec) == spec
    assert (message.step, message.total_steps) == (7, 7)
    # Float seconds carry about a microsecond of precision at this magnitude.
    assert message.created_at.ToNanoseconds() / 1e9 == pytest.approx(1_700_000_000.25, abs=1e-6)
    assert message.started_at.ToNanoseconds() / 1e9 == pytest.approx(1_700_000_001.5, abs=1e-6)
    assert message.finished_at.ToNanoseconds() / 1e9 == pytest.approx(1_700_000_010.0, abs=1e-6)
    assert message.latest == point_to_proto(point)


def test_job_to_proto_of_a_queued_job_leaves_unknown_times_and_point_unset() -> None:
    record = JobRecord(job_id="job-2", spec=spec_from_proto(minimal_message()), created_at=5.0)

    message = job_to_proto(record)

    assert message.state == pb.QUEUED
    assert message.reason == ""
    assert (message.step, message.total_steps) == (0, 0)
    assert not message.HasField("started_at")
    assert not message.HasField("finished_at")
    assert not message.HasField("latest")


@pytest.mark.parametrize("state", list(JobState))
def test_state_from_proto_maps_each_state_both_ways(state: JobState) -> None:
    assert state_from_proto(pb.JobState.Value(state.value)) is state


def test_unspecified_state_means_no_filter() -> None:
    assert state_from_proto(pb.JOB_STATE_UNSPECIFIED) is None


@pytest.mark.parametrize("value", [99, -1])
def test_unknown_state_value_is_invalid(value: int) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        state_from_proto(value)

    assert caught.value.field == "state"
    assert str(value) in str(caught.value)


def test_a_schedule_spec_as_a_dict_and_as_the_optimizers_schedule() -> None:
    rule = ScheduleSpec(kind="step", warmup_steps=5, step_size=7, gamma=0.5, min_learning_rate=0.01)
    assert rule.as_dict() == dataclasses.asdict(rule)
    schedule = rule.schedule(total_steps=100)
    assert (schedule.kind, schedule.warmup_steps, schedule.step_size) == ("step", 5, 7)
    assert (schedule.gamma, schedule.min_learning_rate, schedule.total_steps) == (0.5, 0.01, 100)
    spec = JobSpec(
        layers=(LayerSpec(units=10, activation="identity"),),
        dataset=DatasetSpec(name="digits"),
        schedule=rule,
    )
    assert spec_to_proto(spec).schedule == pb.ScheduleSpec(**dataclasses.asdict(rule))
