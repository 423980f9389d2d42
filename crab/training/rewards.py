"""Pure reward math of RWFM. Every formula here is specified in `docs/reward_weighting.md`.

Two halves:
- per-dataset annotation (NumPy, vectorised over all frames once): step reward, chunk return and
  episode reward (the return signal G that the advantage normalises);
- per-batch weighting (torch, stays on the device, no host synchronisation): advantage, RWFM weights
  with clipping and batch normalisation, and the weight statistics that the trainer logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# The fields every training item carries (the guide's names).
REWARD_FIELDS = ("step_reward", "chunk_return", "episode_reward", "episode_success", "episode_damage")


@dataclass(frozen=True)
class RewardSpec:
    """Constants of the reward definition; they are part of the statistics fingerprint."""

    chunk_size: int = 50  # H: the policy's action chunk (SmolVLA's default chunk_size)
    gamma: float = 1.0  # discount inside a chunk
    damage_penalty: float = 1.0  # lambda_d in R_e = success - lambda_d * damage


QUALITY_LABELS = {
    # quality -> (episode_success, episode_damage), used only when nothing more specific exists
    "clean": (1.0, 0.0),
    "cracked": (0.0, 1.0),
    "failed": (0.0, 0.0),
}


def episode_reward_from_labels(success: np.ndarray, damage: np.ndarray, damage_penalty: float) -> np.ndarray:
    """R_e = s_e - lambda_d * d_e, per episode."""
    return success.astype(np.float64) - damage_penalty * damage.astype(np.float64)


def sparse_step_rewards(episode_index: np.ndarray, episode_reward: np.ndarray) -> np.ndarray:
    """Without a per-step reward column: r_t = R_e on an episode's last frame, 0 elsewhere.

    `episode_index` is per frame (frames of one episode contiguous and in order); `episode_reward`
    is per frame too (R_e broadcast over the episode's frames).
    """
    last = np.ones(len(episode_index), dtype=bool)
    last[:-1] = episode_index[1:] != episode_index[:-1]
    return np.where(last, episode_reward, 0.0)


def chunk_returns(step_reward: np.ndarray, episode_index: np.ndarray, chunk_size: int, gamma: float) -> np.ndarray:
    """chunk_return_t = sum_{k=0}^{H-1} gamma^k r_{t+k}, truncated at the end of t's episode.

    Vectorised: one pass per offset k (H passes over the frame array), no Python loop over frames.
    """
    n = len(step_reward)
    out = np.zeros(n, dtype=np.float64)
    for k in range(min(chunk_size, n)):
        same_episode = episode_index[k:] == episode_index[: n - k]
        out[: n - k] += np.where(same_episode, (gamma**k) * step_reward[k:], 0.0)
    return out


def advantage(signal: Tensor, mean: float, std: float, std_floor: float) -> Tensor:
    """A = (G - mean_G) / max(std_G, std_floor), with the manifest's frame-level statistics of G.

    The floor (in reward units: a success is worth 1) keeps data of nearly uniform quality, e.g. only
    clean episodes, from blowing tiny differences of G up into large advantages.
    """
    return (signal - mean) / max(std, std_floor)


def rwfm_weights(
    adv: Tensor, alpha: float, clip_min: float, clip_max: float, normalize: bool
) -> tuple[Tensor, Tensor]:
    """w = clip(exp(alpha * A), clip_min, clip_max), then w / mean_batch(w) when `normalize`.

    Returns (weights, clipped) where `clipped` marks samples whose raw weight hit a clip bound. With
    `clip_min = 0` a batch whose weights all underflow to 0 keeps weight 0 (it teaches nothing) instead
    of dividing by zero.
    """
    raw = torch.exp(alpha * adv)
    clipped = (raw < clip_min) | (raw > clip_max)
    w = raw.clamp(clip_min, clip_max)
    if normalize:
        w = w / w.mean().clamp_min(torch.finfo(w.dtype).tiny)
    return w, clipped


def weight_shares(
    signals: Mapping[str, np.ndarray], mean: float, std: float, alpha: float, clip: tuple[float, float], std_floor: float
) -> dict[str, dict[str, float]]:
    """Per group of frames (e.g. per dataset or quality): its share of the frames, its mean clipped raw
    weight and its share of the total weight, i.e. how much of the data the weighted loss imitates.

    Batch normalisation divides every weight of a batch by the same number, so these shares are what
    training sees on average.
    """
    raw = {
        k: rwfm_weights(advantage(torch.as_tensor(g, dtype=torch.float64), mean, std, std_floor), alpha, *clip, False)[0]
        for k, g in signals.items()
    }
    frames = sum(len(w) for w in raw.values())
    total = sum(float(w.sum()) for w in raw.values())
    return {
        k: {"frame_share": len(w) / frames, "mean_weight": float(w.mean()), "weight_share": float(w.sum()) / total}
        for k, w in raw.items()
    }


def task_shares(shares: Mapping[str, Mapping[str, float]], task_of: Mapping[str, str]) -> dict[str, float]:
    """Each group's share of its task's total weight (`shares` from `weight_shares`): the part of that
    task's behaviour the weighted loss imitates from it. 0 where the whole task weighs 0."""
    totals: dict[str, float] = {}
    for k, s in shares.items():
        totals[task_of[k]] = totals.get(task_of[k], 0.0) + s["weight_share"]
    return {k: s["weight_share"] / totals[task_of[k]] if totals[task_of[k]] else 0.0 for k, s in shares.items()}


def weight_statistics(w: Tensor, clipped: Tensor) -> dict[str, Tensor]:
    """The guide's weight metrics, as 0-d tensors on w's device.

    effective_batch_weight is Kish's effective sample size over the batch size: (sum w)^2 / (B sum w^2),
    1.0 when all weights are equal and 1/B when one sample carries the whole batch.
    """
    w = w.detach().float()
    return {
        "w_mean": w.mean(),
        "w_std": w.std(unbiased=False),
        "w_p95": torch.quantile(w, 0.95),
        "w_max": w.max(),
        "clipped_frac": clipped.float().mean(),
        "effective_batch_weight": w.sum() ** 2 / (w.numel() * (w**2).sum()),
    }
