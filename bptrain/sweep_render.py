"""How the `bptrain sweep` commands show sweeps: a table of trials (number, parameters,
state, rung, metric, steps) and the best trial's line, a list of sweeps, or JSON."""

from __future__ import annotations

import json
from collections.abc import Iterable

import click
from google.protobuf import json_format
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from bptrain.render import print_rows
from bptrain.sweeps import best_trial
from bptrain.v1 import sweeps_pb2 as spb
from bptrain.v1 import training_pb2 as pb


def sweep_dict(sweep: spb.Sweep) -> dict:
    return json_format.MessageToDict(sweep, preserving_proto_field_name=True)


def value_text(value: spb.ParameterValue) -> str:
    if value.WhichOneof("value") == "text":
        return value.text
    return f"{value.number:.4g}"


def parameters_text(trial: spb.Trial) -> str:
    return " ".join(f"{v.path}={value_text(v)}" for v in trial.parameters)


def trial_state(trial: spb.Trial) -> str:
    """Its job's state; STOPPED for a job the scheduler cancelled ("SUCCEEDED, stopped"
    when the job ended before the scheduler's stop reached it)."""
    if trial.state == pb.JOB_STATE_UNSPECIFIED:
        return "STARTING"
    state = pb.JobState.Name(trial.state)
    if trial.stopped_early:
        return "STOPPED" if trial.state == pb.CANCELLED else f"{state}, stopped"
    return state


def _trial_row(trial: spb.Trial, paths: list[str]) -> list[str]:
    values = {v.path: value_text(v) for v in trial.parameters}
    steps = f"{trial.step}/{trial.total_steps}" if trial.total_steps else str(trial.step)
    return [
        str(trial.number),
        *(values.get(path, "") for path in paths),
        trial_state(trial),
        str(trial.rung),
        f"{trial.metric:.4f}" if trial.HasField("metric") else "",
        steps,
    ]


def trials_table(sweep: spb.Sweep, trials: Iterable[spb.Trial] | None = None) -> Table:
    """The trials (default: the sweep's) in number order, the best one in bold green."""
    paths = [p.path for p in sweep.spec.parameters]
    table = Table(title=None, show_edge=True)
    table.add_column("#", justify="right", no_wrap=True)
    for path in paths:
        table.add_column(path, justify="right")
    for heading in ("STATE", "RUNG"):
        table.add_column(heading)
    table.add_column(sweep.spec.metric or "METRIC", justify="right")
    table.add_column("STEPS", justify="right")
    best = leader(sweep, trials)
    for trial in sorted(trials if trials is not None else sweep.trials, key=lambda t: t.number):
        is_best = best is not None and trial.number == best.number
        table.add_row(*_trial_row(trial, paths), style="bold green" if is_best else None)
    return table


def leader(sweep: spb.Sweep, trials: Iterable[spb.Trial] | None = None) -> spb.Trial | None:
    """The best trial: the server's once it names one, else the best SUCCEEDED trial
    among `trials` by the sweep's metric and direction (lowest number on a tie)."""
    if trials is None or sweep.HasField("best_trial"):
        return best_trial(sweep)
    done = [t for t in trials if t.state == pb.SUCCEEDED and t.HasField("metric")]
    sign = 1.0 if sweep.spec.direction == "minimize" else -1.0
    return min(done, key=lambda t: (sign * t.metric, t.number), default=None)


def best_line(sweep: spb.Sweep, trial: spb.Trial | None = None) -> str:
    """ "best: trial 3 (job-…) validation_accuracy 0.9861  optimizer.learning_rate=…", or
    why there is none."""
    trial = trial or best_trial(sweep)
    if trial is None and sweep.state in (pb.RUNNING, pb.JOB_STATE_UNSPECIFIED):
        return "no best trial yet"
    if trial is None:
        reason = f": {sweep.reason}" if sweep.reason else ""
        return f"no best trial ({pb.JobState.Name(sweep.state)}{reason})"
    return (
        f"best: trial {trial.number} ({trial.job_id}) {sweep.spec.metric} {trial.metric:.4f}"
        f"  {parameters_text(trial)}"
    )


def sweep_line(sweep: spb.Sweep, trials: Iterable[spb.Trial] | None = None) -> str:
    """The sweep in one line: id, name, state, trials started of the budget, steps."""
    trials = list(trials if trials is not None else sweep.trials)
    steps = sum(t.step for t in trials), sum(t.total_steps for t in trials)
    reason = f" ({sweep.reason})" if sweep.reason else ""
    return (
        f"{sweep.sweep_id or '(not submitted)'} {sweep.name}  {pb.JobState.Name(sweep.state)}"
        f"{reason}  trials {len(trials)}/{sweep.spec.max_trials}  steps {steps[0]}/{steps[1]}"
    )


def sweep_view(sweep: spb.Sweep, trials: Iterable[spb.Trial] | None = None) -> Group:
    trials = list(trials if trials is not None else sweep.trials)
    best = leader(sweep, trials)
    lines = [Text(sweep_line(sweep, trials)), trials_table(sweep, trials)]
    if best is not None:
        lines.append(Text(best_line(sweep, best)))
    return Group(*lines)


def stdout_console() -> Console:
    console = Console()
    if not console.is_terminal:  # piped: not cut to 80 columns, scripts grep ids out of it
        console = Console(width=max(console.width, 200))
    return console


def print_sweep(sweep: spb.Sweep, output: str) -> None:
    """One sweep: JSON (the Sweep message), or its line, its trials and its best one."""
    if output == "json":
        click.echo(json.dumps(sweep_dict(sweep), indent=2))
        return
    console = stdout_console()
    console.print(sweep_line(sweep), soft_wrap=True)
    if sweep.trials:
        console.print(trials_table(sweep))
    console.print(best_line(sweep), soft_wrap=True)


def _sweep_row(sweep: spb.Sweep) -> list[str]:
    best = best_trial(sweep)
    return [
        sweep.sweep_id,
        sweep.name,
        sweep.owner,
        pb.JobState.Name(sweep.state),
        f"{len(sweep.trials)}/{sweep.spec.max_trials}",
        sweep.spec.metric,
        f"{best.metric:.4f} (trial {best.number})" if best is not None else "",
        sweep.reason,
    ]


def print_sweeps(sweeps: Iterable[spb.Sweep], output: str) -> None:
    headings = ("SWEEP ID", "NAME", "OWNER", "STATE", "TRIALS", "METRIC", "BEST", "REASON")
    print_rows(list(sweeps), output, headings, _sweep_row)
