"""Protobuf ↔ domain objects for SweepService (convert.py does the JobSpec inside)."""

from __future__ import annotations

from collections.abc import Callable

from bptrain.v1 import sweeps_pb2 as spb
from bptrain.v1 import training_pb2 as pb
from services.api import convert
from services.datasets.uploads import DatasetInfo
from services.errors import InvalidSpecError
from services.jobs.spec_checks import nested
from services.sweeps.paths import Value
from services.sweeps.records import SweepEvent, SweepRecord, TrialRecord
from services.sweeps.spec import ParameterSpec, SchedulerSpec, SweepSpec, parameter


def sweep_spec_from_proto(
    message: spb.SweepSpec, find_dataset: Callable[[str], DatasetInfo] | None = None
) -> SweepSpec:
    """Validate a SweepSpec message (InvalidSpecError names the field)."""
    if not message.HasField("base"):
        raise InvalidSpecError("base", "is required: the JobSpec every trial starts from")
    try:
        base = convert.spec_from_proto(message.base, find_dataset)
    except InvalidSpecError as error:
        raise error.under("base") from None
    parameters = tuple(
        parameter(i, path=p.path, **_domain(i, p)) for i, p in enumerate(message.parameters)
    )
    scheduler = nested(
        "scheduler",
        SchedulerSpec,
        **convert.given_strings(message.scheduler, ("kind",)),
        **convert.set_fields(message.scheduler, ("grace_period", "reduction_factor")),
    )
    return SweepSpec.build(
        base=base,
        parameters=parameters,
        scheduler=scheduler,
        **convert.given_strings(message, ("name", "metric", "direction", "sampler")),
        **convert.set_fields(message, ("max_trials", "parallel_trials", "seed")),
    )


def _domain(index: int, message: spb.SweepParameter) -> dict:
    which = message.WhichOneof("domain")
    if which is None:
        raise InvalidSpecError(
            f"parameters[{index}]", "needs one of grid, choice, uniform, log_uniform, integer"
        )
    domain = getattr(message, which)
    if which in ("grid", "choice"):
        if domain.numbers and domain.texts:
            raise InvalidSpecError(
                f"parameters[{index}].{which}", "takes numbers or texts, not both"
            )
        return {"domain": which, "values": tuple(domain.numbers) or tuple(domain.texts)}
    fields = {"domain": which, "low": domain.low, "high": domain.high}
    if which == "integer" and domain.HasField("step"):
        fields["step"] = domain.step
    return fields


def sweep_spec_to_proto(spec: SweepSpec) -> spb.SweepSpec:
    """The spec with every default filled in."""
    return spb.SweepSpec(
        name=spec.name,
        base=convert.spec_to_proto(spec.base),
        parameters=[_parameter_to_proto(p) for p in spec.parameters],
        metric=spec.metric,
        direction=spec.direction,
        max_trials=spec.max_trials,
        parallel_trials=spec.parallel_trials,
        seed=spec.seed,
        sampler=spec.sampler,
        scheduler=spb.SweepScheduler(
            kind=spec.scheduler.kind,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        ),
    )


def _parameter_to_proto(spec: ParameterSpec) -> spb.SweepParameter:
    message = spb.SweepParameter(path=spec.path)
    if spec.domain in ("grid", "choice"):
        values = getattr(message, spec.domain)
        if spec.values and isinstance(spec.values[0], str):
            values.texts.extend(spec.values)  # type: ignore[arg-type]
        else:
            values.numbers.extend(spec.values)  # type: ignore[arg-type]
    elif spec.domain == "integer":
        message.integer.CopyFrom(
            spb.IntRange(low=int(spec.low), high=int(spec.high), step=spec.step)
        )
    else:
        getattr(message, spec.domain).CopyFrom(spb.Range(low=spec.low, high=spec.high))
    return message


def _value(path: str, value: Value) -> spb.ParameterValue:
    if isinstance(value, str):
        return spb.ParameterValue(path=path, text=value)
    if isinstance(value, bool):
        return spb.ParameterValue(path=path, text="true" if value else "false")
    return spb.ParameterValue(path=path, number=value)


def trial_to_proto(trial: TrialRecord) -> spb.Trial:
    message = spb.Trial(
        number=trial.number,
        job_id=trial.job_id,
        parameters=[_value(path, value) for path, value in trial.params.items()],
        state=pb.JobState.Value(trial.state.value) if trial.state else pb.JOB_STATE_UNSPECIFIED,
        reason=trial.reason,
        stopped_early=trial.stopped_early,
        rung=trial.rung,
        metric_step=trial.metric_step,
        step=trial.step,
        total_steps=trial.total_steps,
    )
    if trial.metric is not None:
        message.metric = trial.metric
    return message


def sweep_to_proto(record: SweepRecord) -> spb.Sweep:
    message = spb.Sweep(
        sweep_id=record.sweep_id,
        name=record.spec.name,
        state=pb.JobState.Value(record.state.value),
        reason=record.reason,
        spec=sweep_spec_to_proto(record.spec),
        trials=[trial_to_proto(t) for t in record.trials],
        steps_trained=record.steps_trained,
        steps_full=record.steps_full,
        submission_id=record.submission_id,
        owner=record.owner,
    )
    message.created_at.FromNanoseconds(int(record.created_at * 1e9))
    if record.finished_at is not None:
        message.finished_at.FromNanoseconds(int(record.finished_at * 1e9))
    best = record.best
    if best is not None:
        message.best_trial = best.number
    return message


def event_to_proto(event: SweepEvent) -> spb.SweepEvent:
    message = spb.SweepEvent(
        seq=event.seq,
        kind=spb.SweepEventKind.Value(event.kind.value),
        trial=trial_to_proto(event.trial),
        message=event.message,
    )
    message.at.FromNanoseconds(int(event.at * 1e9))
    return message
