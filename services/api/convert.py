"""Protobuf ↔ domain objects. The only module besides the servicer that sees bptrain.v1 types."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import Message

from bptrain.v1 import training_pb2 as pb
from services.datasets import DatasetOptions
from services.datasets.uploads import DatasetInfo
from services.errors import InvalidSpecError
from services.jobs.early_stopping import StopWhenSpec
from services.jobs.records import JobRecord, JobState, MetricPoint
from services.jobs.spec import (
    UPLOADED,
    DatasetSpec,
    JobSpec,
    LayerSpec,
    ScheduleSpec,
    nested,
)
from services.paramserver.optimizers import OptimizerConfig


def set_fields(message, names: tuple[str, ...]) -> dict:
    """The proto3 `optional` fields the client set, by name (unset ones take defaults)."""
    return {name: getattr(message, name) for name in names if message.HasField(name)}


def given_strings(message, names: tuple[str, ...]) -> dict:
    """The plain string fields the client gave, by name: proto3 cannot tell an empty
    string from an unset one, so empty ones are left out and take the spec's defaults."""
    return {name: getattr(message, name) for name in names if getattr(message, name)}


def spec_from_proto(
    message: pb.JobSpec, find_dataset: Callable[[str], DatasetInfo] | None = None
) -> JobSpec:
    """Validate a JobSpec message into the domain spec (InvalidSpecError names the field).

    `find_dataset` looks up an uploaded dataset by id (NotFoundError when unknown).
    """
    layers = tuple(
        nested(
            f"layers[{i}]",
            LayerSpec,
            units=layer.units,
            activation=layer.activation,
            **set_fields(layer, ("dropout",)),
        )
        for i, layer in enumerate(message.layers)
    )
    optimizer_fields = set_fields(
        message.optimizer,
        (
            "learning_rate",
            "momentum",
            "beta1",
            "beta2",
            "epsilon",
            "weight_decay",
            "rho",
            "clip_norm",
        ),
    )
    schedule = nested(
        "schedule",
        ScheduleSpec,
        **given_strings(message.schedule, ("kind",)),
        **set_fields(message.schedule, ("warmup_steps", "step_size", "gamma", "min_learning_rate")),
    )
    optimizer = nested(
        "optimizer",
        OptimizerConfig,
        **given_strings(message.optimizer, ("kind",)),
        **optimizer_fields,
    )
    stop_when = nested(
        "stop_when",
        StopWhenSpec,
        metric=message.stop_when.metric,
        **set_fields(message.stop_when, ("at_least", "at_most", "patience_evaluations")),
    )
    dataset_message = message.dataset
    options = nested(
        "dataset",
        DatasetOptions,
        seed=message.seed if message.HasField("seed") and message.seed >= 0 else 0,
        **set_fields(dataset_message, ("samples", "features", "classes", "noise")),
    )
    uploaded: dict = {}
    if dataset_message.name == UPLOADED and dataset_message.dataset_id and find_dataset:
        info = find_dataset(dataset_message.dataset_id)
        uploaded = {"task": info.task, "features": info.features, "outputs": info.outputs}
    dataset = nested(
        "dataset",
        DatasetSpec,
        name=dataset_message.name,
        options=options,
        dataset_id=dataset_message.dataset_id,
        **uploaded,
        **set_fields(dataset_message, ("validation_fraction",)),
    )
    top = set_fields(
        message,
        (
            "batch_size",
            "epochs",
            "steps",
            "workers",
            "seed",
            "eval_every",
            "checkpoint_every",
            "max_seconds",
            "l2",
            "label_smoothing",
            "huber_delta",
            "staleness",
            "staleness_aware_lr",
            "ps_shards",
            "topk_fraction",
        ),
    )
    strings = given_strings(
        message, ("name", "loss", "consistency", "init", "dtype", "device", "compression")
    )
    return JobSpec(
        layers=layers,
        optimizer=optimizer,
        dataset=dataset,
        schedule=schedule,
        stop_when=stop_when,
        **strings,
        **top,
    )


def spec_to_proto(spec: JobSpec) -> pb.JobSpec:
    """The spec with every default filled in."""
    optimizer = spec.optimizer
    options = spec.dataset.options
    message = pb.JobSpec(
        name=spec.name,
        layers=[
            pb.LayerSpec(units=layer.units, activation=layer.activation, dropout=layer.dropout)
            for layer in spec.layers
        ],
        loss=spec.loss,
        optimizer=pb.OptimizerSpec(
            kind=optimizer.kind,
            learning_rate=optimizer.learning_rate,
            momentum=optimizer.momentum,
            beta1=optimizer.beta1,
            beta2=optimizer.beta2,
            epsilon=optimizer.epsilon,
            weight_decay=optimizer.weight_decay,
            rho=optimizer.rho,
        ),
        schedule=pb.ScheduleSpec(**spec.schedule.as_dict()),
        l2=spec.l2,
        label_smoothing=spec.label_smoothing,
        huber_delta=spec.huber_delta,
        init=spec.init,
        dtype=spec.dtype,
        device=spec.device,
        batch_size=spec.batch_size,
        epochs=spec.epochs,
        dataset=pb.DatasetSpec(
            name=spec.dataset.name,
            dataset_id=spec.dataset.dataset_id,
            validation_fraction=spec.dataset.validation_fraction,
            samples=options.samples,
            features=options.features,
            classes=options.classes,
            noise=options.noise,
        ),
        workers=spec.workers,
        consistency=spec.consistency,
        staleness_aware_lr=spec.staleness_aware_lr,
        ps_shards=spec.ps_shards,
        compression=spec.compression,
        seed=spec.seed,
    )
    optional = {
        "staleness": spec.staleness_bound,
        "topk_fraction": spec.topk_share if spec.compression == "topk" else None,
        "steps": spec.steps,
        "eval_every": spec.eval_every,
        "checkpoint_every": spec.checkpoint_every,
        "max_seconds": spec.max_seconds,
    }
    _set_present(message, optional)  # unset fields stay unset (proto3 optional)
    _set_present(message.optimizer, {"clip_norm": optimizer.clip_norm})
    if spec.stop_when.is_set:
        rule = spec.stop_when
        message.stop_when.metric = rule.metric
        _set_present(
            message.stop_when,
            {name: getattr(rule, name) for name in ("at_least", "at_most", "patience_evaluations")},
        )
    return message


def _set_present(message: Message, values: dict[str, object]) -> None:
    """Sets each field of `message` whose value is not None."""
    for name, value in values.items():
        if value is not None:
            setattr(message, name, value)


def point_to_proto(point: MetricPoint) -> pb.MetricPoint:
    message = pb.MetricPoint(
        step=point.step,
        epoch=point.epoch,
        loss=point.loss,
        samples_per_second=point.samples_per_second,
        learning_rate=point.learning_rate,
        elapsed_seconds=point.elapsed_seconds,
        gradient_norms=point.gradient_norms,
        staleness_mean=point.staleness_mean,
        staleness_max=point.staleness_max,
        clock_lead_max=point.clock_lead_max,
        bytes_pushed=point.bytes_pushed,
        bytes_pulled=point.bytes_pulled,
        compute_seconds=point.compute_seconds,
    )
    if point.validation_loss is not None:
        message.validation_loss = point.validation_loss
    if point.validation_accuracy is not None:
        message.validation_accuracy = point.validation_accuracy
    return message


def job_to_proto(record: JobRecord) -> pb.Job:
    message = pb.Job(
        job_id=record.job_id,
        name=record.spec.name,
        state=pb.JobState.Value(record.state.value),
        reason=record.reason,
        spec=spec_to_proto(record.spec),
        step=record.step,
        total_steps=record.total_steps,
        queue_position=record.queue_position,
        queue_reason=record.queue_reason,
        submission_id=record.submission_id,
        owner=record.owner,
        sweep_id=record.sweep_id,
        trial_number=record.trial_number,
    )
    message.created_at.FromNanoseconds(int(record.created_at * 1e9))
    if record.started_at is not None:
        message.started_at.FromNanoseconds(int(record.started_at * 1e9))
    if record.finished_at is not None:
        message.finished_at.FromNanoseconds(int(record.finished_at * 1e9))
    if record.latest is not None:
        message.latest.CopyFrom(point_to_proto(record.latest))
    for index, where in enumerate(record.placement):
        message.workers.add(index=index, **where)
    return message


def state_from_proto(state: int) -> JobState | None:
    """The ListJobs filter; JOB_STATE_UNSPECIFIED means every state."""
    if state == pb.JOB_STATE_UNSPECIFIED:
        return None
    if state not in pb.JobState.values():
        raise InvalidSpecError("state", f"must be a JobState value, got {state}")
    return JobState(pb.JobState.Name(state))


def dataset_to_proto(info: DatasetInfo) -> pb.Dataset:
    message = pb.Dataset(
        dataset_id=info.dataset_id,
        name=info.name,
        task=info.task,
        rows=info.rows,
        features=info.features,
        outputs=info.outputs,
        size_bytes=info.size_bytes,
        owner=info.owner,
    )
    message.created_at.FromNanoseconds(int(info.created_at * 1e9))
    return message
