"""BSP over Ray equals single-process mini-batch SGD on the same global batches."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from bptrain.specfile import spec_from_dict
from services.api.convert import spec_from_proto
from services.jobs.records import JobState
from services.jobs.runner import JobRunner
from services.jobs.runner_options import RunnerOptions
from services.jobs.training_data import prepare_data
from services.jobs.weights import join_exported
from tests.conftest import digits_spec
from worker.layout import ParamLayout
from worker.model import MLP

pytestmark = pytest.mark.slow

STEPS = 20


def single_process_sgd(spec, steps: int) -> np.ndarray:
    """The reference: one process, one model, the union of the workers' batches per step."""
    data = prepare_data(spec)
    plan = data.plan
    model = MLP(spec.sizes, spec.activations, spec.loss)
    theta = ParamLayout(spec.sizes).init_theta(spec.activations, spec.seed).astype(np.float64)
    eta = spec.optimizer.learning_rate
    for step in range(steps):
        epoch, index = divmod(step, plan.steps_per_epoch)
        global_batch = plan.global_batch(epoch, index, seed=spec.seed)  # (B,), (R,) at the end
        _, g = model.loss_and_gradient(
            theta, data.X_train[global_batch].astype(np.float64), data.y_train[global_batch]
        )
        theta -= eta * g  # θ ← θ − η·g
    return theta


@pytest.mark.parametrize(
    ("workers", "shards", "transport"),
    [
        (1, 1, "colocated"),  # the default for bsp: nothing moves
        (2, 1, "colocated"),  # θ and G in shared memory
        (4, 1, "colocated"),
        (1, 2, "tasks"),  # sharded parameter-server actors: steps as tasks
        (2, 2, "tasks"),
        (4, 2, "tasks"),
        (2, 1, "graph"),  # one parameter-server actor, a compiled graph
        (2, 1, "tasks"),
    ],
)
def test_bsp_matches_single_process_sgd_across_epoch_ends(
    ray_session: None, workers: int, shards: int, transport: str
) -> None:
    spec = spec_from_proto(
        spec_from_dict(
            digits_spec(
                workers=workers,
                ps_shards=shards,
                batch_size=253,  # uneven local batches (127 + 126, 64 + 63 + 63 + 63)
                steps=STEPS,
                optimizer={"kind": "sgd", "learning_rate": 0.1},
            )
        )
    )
    plan = prepare_data(spec).plan
    assert 2 * plan.steps_per_epoch < STEPS  # two epochs' short last steps are in the run
    assert sum(plan.last_batches) < plan.batch_size

    runner = JobRunner(  # run here, unpolled: no store to stay close to
        f"bsp-{workers}-{shards}-{transport}",
        spec,
        RunnerOptions(transport=transport, max_lead_s=None),
    )
    assert runner.run() is JobState.SUCCEEDED
    step, distributed = join_exported(ray.get(runner.final_weights()))
    assert step == STEPS
    reference = single_process_sgd(spec, STEPS)
    relative = np.max(np.abs(distributed - reference)) / np.max(np.abs(reference))
    assert relative <= 1e-5
    # and the run did move θ: the check is not comparing two initialisations
    initial = ParamLayout(spec.sizes).init_theta(spec.activations, spec.seed)
    assert np.max(np.abs(distributed - initial)) > 100 * np.max(np.abs(distributed - reference))
