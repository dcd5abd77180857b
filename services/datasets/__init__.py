"""Data sets a job can train on: built-in ones (offline) and their splits."""

from services.datasets.builtin import (
    DATASET_NAMES,
    Dataset,
    DatasetOptions,
    input_width,
    load_dataset,
    output_width,
    split_validation,
)

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "DatasetOptions",
    "input_width",
    "load_dataset",
    "output_width",
    "split_validation",
]
