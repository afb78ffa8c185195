"""The evaluation's settings (job.json `evaluation`), apart so config parsing imports no torch."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    max_samples: int = 8  # held-out prompts answered by the base model and by the adapter
    max_new_tokens: int = 64
