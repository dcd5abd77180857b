"""ScheduleSpec: how a job's learning rate η changes with the step."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from services.paramserver.optimizers import LRSchedule


@dataclass(frozen=True, kw_only=True)
class ScheduleSpec:
    """How η changes with the step (see services.paramserver.optimizers.LRSchedule).

    The job's total step count, which a cosine schedule needs, is known only once its
    data is loaded: `schedule(total_steps)` builds the optimizer's schedule then.
    """

    kind: str = "constant"
    warmup_steps: int = 0
    step_size: int = 1000
    gamma: float = 0.1
    min_learning_rate: float = 0.0

    def __post_init__(self) -> None:
        self.schedule(total_steps=self.warmup_steps + 1)  # validates every field

    def schedule(self, total_steps: int) -> LRSchedule:
        return LRSchedule(**self.as_dict(), total_steps=total_steps)

    def as_dict(self) -> dict[str, str | int | float]:
        """Every field by name; its values are plain numbers and a name, so a shallow
        dict (`dataclasses.asdict` deep-copies, a fifth of validating a spec)."""
        return {name: getattr(self, name) for name in _FIELD_NAMES}


_FIELD_NAMES = tuple(field.name for field in dataclasses.fields(ScheduleSpec))
