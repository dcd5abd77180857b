"""A job's training rows: the dataset after the validation hold-out, split over workers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.datasets import load_dataset, split_validation
from services.datasets.arrays import load_uploaded
from services.jobs.spec import UPLOADED, JobSpec
from worker.sampling import BatchPlan


class DataError(Exception):
    """The job's data cannot be prepared; the message is the reason users see."""


@dataclass(frozen=True)
class TrainingData:
    """A job's rows after the validation hold-out, and how they split over workers."""

    X_train: np.ndarray  # (N, D) float32
    y_train: np.ndarray  # (N,) labels or (N, K) targets
    X_val: np.ndarray
    y_val: np.ndarray
    plan: BatchPlan

    def shard(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        start, size = self.plan.shard_starts[i], self.plan.shard_sizes[i]
        return self.X_train[start : start + size], self.y_train[start : start + size]


def prepare_data(spec: JobSpec, datasets_dir: Path | None = None) -> TrainingData:
    """Load the dataset, hold out validation rows, plan the shards (all seeded by the spec).

    Uploaded datasets are read from `datasets_dir` (shared storage in a cluster).
    """
    if spec.dataset.name == UPLOADED:
        if datasets_dir is None:
            raise DataError("the runner was not told where uploaded datasets are stored")
        dataset_id = spec.dataset.dataset_id
        path = Path(datasets_dir) / f"{dataset_id}.npz"
        if not path.is_file():
            raise DataError(f"uploaded dataset {dataset_id} is missing from {datasets_dir}")
        dataset = load_uploaded(path, dataset_id)
    else:
        dataset = load_dataset(spec.dataset.name, spec.dataset.options)
    X_train, y_train, X_val, y_val = split_validation(
        dataset.X_train, dataset.y_train, spec.dataset.validation_fraction, spec.seed
    )
    try:
        plan = BatchPlan(n_train=len(X_train), batch_size=spec.batch_size, workers=spec.workers)
    except ValueError as error:
        raise DataError(str(error)) from None
    return TrainingData(X_train, y_train, X_val, y_val, plan)


def total_steps(spec: JobSpec, plan: BatchPlan) -> int:
    return spec.steps if spec.steps is not None else spec.epochs * plan.steps_per_epoch
