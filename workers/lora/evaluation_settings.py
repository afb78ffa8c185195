"""The evaluation's settings (job.json `evaluation`), apart so config parsing imports no torch."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    max_samples: int = dataclasses.field(
        default=8, metadata={"help": "held-out prompts answered by the base model and the adapter"}
    )
    max_new_tokens: int = dataclasses.field(
        default=64, metadata={"help": "greedy tokens generated per evaluation prompt"}
    )
