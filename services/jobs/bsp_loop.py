"""The bsp step loop over parameter-server actors: one global batch per step, every
worker's gradient at the same θ, averaged; each step either as tasks (θ's and the
gradient slices' ObjectRefs passed between actors, `Cohort.step`) or, with
`transport="graph"`, as a Ray compiled graph (`Cohort.compile_step`)."""

from __future__ import annotations

import ray

from services.jobs.faults import FAULTS, STEP_TIMEOUT_S
from services.jobs.shards import merge_shards
from services.jobs.training_run import TrainingRun


def train_bsp(run: TrainingRun, step: int) -> None:
    """Train from `step` (done) to the last step, repairing what is lost on the way."""
    report, status, recovery = run.report, run.status, run.recovery
    cohort = report.cohort
    graph = cohort.compile_step() if run.transport == "graph" else None
    report.start_clock()  # compiling is set-up, not training time
    warming = graph is not None  # a graph's first run starts its actors' channel loops
    theta_refs = None  # θ as the parameter server holds it for the next step
    while step < report.steps:
        report.check_limits(step)
        status.wait_for_room(step, run.is_cancelled)
        try:
            if graph is not None:
                stats = [ray.get(graph.execute(step + 1), timeout=STEP_TIMEOUT_S)]
                next_theta_refs = None  # θ stays in the parameter server
                if warming:  # seconds on a slow host (more where torch is installed)
                    report.start_clock()
                    warming = False
            else:
                stats_refs, next_theta_refs = cohort.step(theta_refs, step + 1)
                stats = ray.get(stats_refs, timeout=STEP_TIMEOUT_S)
            step += 1
            theta_refs = next_theta_refs
            report.finish_step(step, [merge_shards(stats)], theta_refs)
        except FAULTS as error:
            recovery.stop_if_cancelled()
            if graph is not None:  # its actors are tied to it: all start again
                step = recovery.restart(cohort, step, error)
                graph = cohort.compile_step()
            else:
                resumed = recovery.repair(cohort, step, error)
                step = step if resumed is None else resumed
            theta_refs = None
            status.lead.start(step)
