"""DatasetSpec: which dataset a job trains on (built-in or uploaded) and its validation hold-out."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.datasets import DATASET_NAMES, DatasetOptions, input_width, output_width
from services.errors import InvalidSpecError
from services.jobs.spec_checks import check_choice, check_range

UPLOADED = "uploaded"  # dataset name of a dataset sent with UploadDataset


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """A built-in or uploaded dataset, its generator options and the validation hold-out.

    For name "uploaded", `dataset_id` names the upload, and the server fills in
    `task`, `features` and `outputs` from it before the spec is built.
    """

    name: str
    validation_fraction: float = 0.1
    options: DatasetOptions = field(default_factory=DatasetOptions)
    dataset_id: str = ""
    task: str = ""
    features: int = 0
    outputs: int = 0

    def __post_init__(self) -> None:
        names = (*DATASET_NAMES, UPLOADED)
        if not self.name:
            raise InvalidSpecError("name", f"is required; one of {', '.join(names)}")
        check_choice("name", self.name, names)
        check_range("validation_fraction", self.validation_fraction, 0.0, 0.5)
        if self.name == UPLOADED:
            if not self.dataset_id:
                raise InvalidSpecError("dataset_id", "is required when name is uploaded")
            if self.task not in ("classification", "regression") or self.features < 1:
                raise InvalidSpecError("dataset_id", "must name an uploaded dataset")
        else:
            if self.dataset_id:
                raise InvalidSpecError("dataset_id", "applies only to name uploaded")
            # Here, not in JobSpec, so a bad option is named under "dataset." (spirals: D = 2).
            input_width(self.name, self.options)

    @property
    def input_width(self) -> int:
        """D, the features per row."""
        return self.features if self.name == UPLOADED else input_width(self.name, self.options)

    @property
    def output_width(self) -> int:
        """C classes, or K regression targets."""
        return self.outputs if self.name == UPLOADED else output_width(self.name, self.options)

    @property
    def is_classification(self) -> bool:
        if self.name == UPLOADED:
            return self.task == "classification"
        return self.name != "synthetic/regression"
