"""JobsConfig: where the jobs service keeps its state, and the limits of its queue."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.jobs.lead import MAX_LEAD_S
from services.tenancy import Quotas


@dataclass(frozen=True, kw_only=True)
class JobsConfig:
    """Where jobs keep their state, what each worker asks Ray for, and the queue's limits.

    At most `max_running_jobs` jobs run at once; later ones wait QUEUED in FIFO order,
    and a submission beyond `max_queued_jobs` waiting jobs is refused. `quotas` bound
    each principal within those limits (services/tenancy.py).
    """

    storage: Path = Path(".bptrain")
    worker_cpus: float = 1.0
    max_running_jobs: int = 2
    max_queued_jobs: int = 100
    max_dataset_bytes: int = 1 << 30
    standby_runners: int = 1  # runners kept booted for the next job (services/jobs/runner_pool.py)
    keep_workers_s: float = 60.0  # a standby keeps its last job's workers (kept_workers.py)
    max_lead_s: float = MAX_LEAD_S  # how far a runner trains past the stored step (lead.py)
    quotas: Quotas = field(default_factory=Quotas)

    def __post_init__(self) -> None:
        if not 0 < self.worker_cpus <= 1024:
            raise ValueError(f"worker_cpus must be in (0, 1024], got {self.worker_cpus}")
        if self.max_running_jobs < 1:
            raise ValueError(f"max_running_jobs must be >= 1, got {self.max_running_jobs}")
        if self.max_queued_jobs < 0:
            raise ValueError(f"max_queued_jobs must be >= 0, got {self.max_queued_jobs}")
        if self.max_dataset_bytes < 1:
            raise ValueError(f"max_dataset_bytes must be >= 1, got {self.max_dataset_bytes}")
        if not 0 <= self.standby_runners <= 8:
            raise ValueError(f"standby_runners must be in [0, 8], got {self.standby_runners}")
        if not 0 <= self.keep_workers_s <= 86_400:
            raise ValueError(f"keep_workers_s must be in [0, 86400], got {self.keep_workers_s}")
        if not 0.5 <= self.max_lead_s <= 3600:
            raise ValueError(f"max_lead_s must be in [0.5, 3600], got {self.max_lead_s}")

    @property
    def database(self) -> Path:
        return self.storage / "bptrain.db"

    @property
    def datasets_dir(self) -> Path:
        return self.storage / "datasets"

    def weights_path(self, job_id: str) -> Path:
        return self.storage / "jobs" / job_id / "weights.npz"

    def checkpoint_dir(self, job_id: str) -> Path:
        return self.storage / "jobs" / job_id / "checkpoints"
