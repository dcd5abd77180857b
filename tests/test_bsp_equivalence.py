"""BSP over Ray equals single-process mini-batch SGD on the same global batches."""

from __future__ import annotations

import numpy as np
import pytest

from bptrain.specfile import spec_from_dict
from services.api.convert import spec_from_proto
from services.jobs.records import JobState
from services.jobs.runner import JobRunner
from services.jobs.training_data import prepare_data
from tests.conftest import digits_spec
from worker.layout import ParamLayout
from worker.model import MLP
from worker.sampling import epoch_order

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
        rows = []
        for worker in range(spec.workers):
            order = epoch_order(
                plan.shard_sizes[worker], seed=spec.seed, epoch=epoch, worker_index=worker
            )
            batch = plan.local_batches[worker]
            rows.append(plan.shard_starts[worker] + order[index * batch : (index + 1) * batch])
        global_batch = np.concatenate(rows)  # (B,)
        _, g = model.loss_and_gradient(
            theta, data.X_train[global_batch].astype(np.float64), data.y_train[global_batch]
        )
        theta -= eta * g  # θ ← θ − η·g
    return theta


@pytest.mark.parametrize("workers", [2, 3])
def test_bsp_matches_single_process_sgd_after_20_steps(ray_session: None, workers: int) -> None:
    spec = spec_from_proto(
        spec_from_dict(
            digits_spec(
                workers=workers,
                batch_size=61,  # uneven local batches: 31 + 30, or 21 + 20 + 20
                steps=STEPS,
                optimizer={"kind": "sgd", "learning_rate": 0.1},
            )
        )
    )
    runner = JobRunner(f"bsp-{workers}", spec)
    assert runner.run() is JobState.SUCCEEDED
    distributed = runner.final_theta()
    reference = single_process_sgd(spec, STEPS)
    relative = np.max(np.abs(distributed - reference)) / np.max(np.abs(reference))
    assert relative <= 1e-5
    # and the run did move θ: the check is not comparing two initialisations
    initial = ParamLayout(spec.sizes).init_theta(spec.activations, spec.seed)
    assert np.max(np.abs(distributed - initial)) > 100 * np.max(np.abs(distributed - reference))
