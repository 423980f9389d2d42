"""Step schedules of the training loss (pure functions of the step)."""

from __future__ import annotations


def lambda_anchor_at(step: int, target: float, warmup_steps: int, ramp_steps: int) -> float:
    """Anchor weight at `step`: 0 while step < warmup_steps, then a linear ramp that reaches `target` at
    step warmup_steps + ramp_steps, constant afterwards (ramp_steps <= 0: jumps to `target`)."""
    if step < warmup_steps:
        return 0.0
    if ramp_steps <= 0 or step >= warmup_steps + ramp_steps:
        return float(target)
    return float(target) * (step - warmup_steps) / ramp_steps
