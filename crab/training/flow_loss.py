"""Pure pieces of the masked flow-matching loss (lerobot 0.6 semantics, plus per-task masks and NaN safety).

Flow convention (SmolVLA's): x_t = t * noise + (1 - t) * actions, target u_t = noise - actions,
t ~ Beta(1.5, 1) * 0.999 + 0.001. A loss element counts only where the chunk step is inside the
episode (`action_is_pad` false), the action dimension is one of the robot's real ones (not the
`max_action_dim` zero padding) and, with per-task masks, the dimension is listed for the sample's task.
Everything here stays on the tensors' device: no host synchronisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from crab.training.config import ConfigError


def sample_flow_time(batch_size: int, device: torch.device | str, generator: torch.Generator | None = None) -> Tensor:
    """t ~ Beta(1.5, 1) * 0.999 + 0.001, shape (B,), drawn on `device` (from `generator` if given).

    Beta(a, 1) has CDF x^a, so U^(1/a) with U ~ Uniform(0, 1) is an exact sample; unlike lerobot's
    `torch.distributions.Beta` draw on the CPU it needs no host-to-device copy.
    """
    return torch.rand(batch_size, device=device, generator=generator) ** (1.0 / 1.5) * 0.999 + 0.001


class TaskDimMask:
    """Which action dimensions count in the loss, per sample, from its task instruction.

    `task_masks` maps an instruction to the indices of its counted dimensions; empty means every real
    dimension for every task. Indices are checked against `action_dim` (the robot's real action size)
    at construction; an instruction missing from a non-empty mapping is an error at lookup time.
    """

    def __init__(self, task_masks: Mapping[str, Sequence[int]], action_dim: int, max_action_dim: int):
        if action_dim > max_action_dim:
            raise ValueError(f"action_dim {action_dim} exceeds max_action_dim {max_action_dim}")
        self.action_dim = action_dim
        self.max_action_dim = max_action_dim
        self._index = {task: i for i, task in enumerate(task_masks)}
        table = torch.zeros(max(len(task_masks), 1), max_action_dim, dtype=torch.bool)
        if not task_masks:
            table[0, :action_dim] = True
        for task, dims in task_masks.items():
            if not dims:
                raise ConfigError(f"task_masks[{task!r}] is empty: the task's loss would count nothing")
            for d in dims:
                if not 0 <= d < action_dim:
                    raise ConfigError(
                        f"task_masks[{task!r}] has action dimension index {d}, outside the robot's "
                        f"{action_dim} real action dimensions [0, {action_dim})"
                    )
            table[self._index[task], list(dims)] = True
        self._table_cpu = table
        self._tables: dict[torch.device, Tensor] = {}

    def missing(self, tasks: Sequence[str]) -> list[str]:
        """The instructions among `tasks` without a mask (none when no per-task masks are set)."""
        if not self._index:
            return []
        return sorted({t.removesuffix("\n") for t in tasks} - set(self._index))

    def __call__(self, tasks: Sequence[str] | None, batch_size: int, device: torch.device) -> Tensor:
        """Bool mask (B, max_action_dim); `tasks` may be omitted when no per-task masks are set.

        Instructions are matched without the trailing newline that SmolVLA's preprocessor appends.
        """
        table = self._tables.get(device)
        if table is None:
            table = self._tables[device] = self._table_cpu.to(device)
        if not self._index:
            return table.expand(batch_size, -1)
        if tasks is None:
            raise KeyError("task: per-task action masks are set but the batch has no 'task' field")
        rows = []
        for task in tasks:
            row = self._index.get(task.removesuffix("\n"))
            if row is None:
                raise ConfigError(f"task {task.removesuffix(chr(10))!r} has no entry in task_masks")
            rows.append(row)
        return table[torch.tensor(rows).to(device, non_blocking=True)]


def loss_mask(action_is_pad: Tensor | None, dim_mask: Tensor, chunk_size: int) -> Tensor:
    """Bool mask (B, H, D): step inside the episode (action_is_pad (B, H) false) and dimension counted
    (dim_mask (B, D)). Without `action_is_pad` every step counts."""
    if action_is_pad is None:
        return dim_mask[:, None, :].expand(-1, chunk_size, -1)
    return (~action_is_pad.bool())[:, :, None] & dim_mask[:, None, :]


def masked_per_sample_loss(v: Tensor, u: Tensor, mask: Tensor) -> Tensor:
    """sum(mask * (v - u)^2) / sum(mask) per sample: v, u, mask (B, H, D) -> (B,).

    Masked elements are selected away before squaring, so garbage (even NaN) in padded targets reaches
    neither the loss nor the gradient.
    """
    diff = torch.where(mask, v - u, 0.0)
    return (diff * diff).sum(dim=(1, 2)) / mask.sum(dim=(1, 2)).clamp_min(1)


def masked_mean_sq_diff(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Mean of (a - b)^2 over the valid elements of the whole batch: a, b, mask (B, H, D) -> 0-d."""
    diff = torch.where(mask, a - b, 0.0)
    return (diff * diff).sum() / mask.sum().clamp_min(1)
