"""Pure reward math of RWFM. Every formula here is specified in `docs/reward_weighting.md`.

Two halves:
- per-dataset annotation (NumPy, vectorised over all frames once): step reward, chunk return and
  episode reward (the return signal G that the advantage normalises);
- per-batch weighting (torch, stays on the device, no host synchronisation): advantage, RWFM weights
  with clipping and normalisation by the training data's mean weight, and the weight statistics that
  the trainer logs.
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
    adv: Tensor, alpha: float, clip_min: float, clip_max: float, mean_weight: float = 1.0
) -> tuple[Tensor, Tensor]:
    """w = clip(exp(alpha * A), clip_min, clip_max) / mean_weight.

    `mean_weight` is a constant: the mean clipped raw weight over the training frames
    (`mean_raw_weight`), so the weights average 1 over an epoch and the loss keeps imitation
    learning's scale. Dividing by a constant, not by the batch's mean, makes the weighted objective the
    same in expectation at every batch size and process count (a batch mean makes every weight 1 at
    batch size 1). Returns (weights, clipped) where `clipped` marks samples whose raw weight hit a bound.
    """
    raw = torch.exp(alpha * adv)
    clipped = (raw < clip_min) | (raw > clip_max)
    return raw.clamp(clip_min, clip_max) / mean_weight, clipped


def frame_weights(
    signal: np.ndarray, mean: float, std: float, alpha: float, clip: tuple[float, float], std_floor: float
) -> np.ndarray:
    """The clipped raw weight clip(exp(alpha * A), *clip) of each frame, from its return signal G."""
    adv = advantage(torch.as_tensor(signal, dtype=torch.float64), mean, std, std_floor)
    return rwfm_weights(adv, alpha, *clip)[0].numpy()


def weight_shares(
    signals: Mapping[str, np.ndarray], mean: float, std: float, alpha: float, clip: tuple[float, float], std_floor: float
) -> dict[str, dict[str, float]]:
    """Per group of frames (e.g. per dataset or quality): its share of the frames, its mean clipped raw
    weight and its share of the total weight, i.e. how much of the data the weighted loss imitates.

    Weights are divided by one constant (`rwfm_weights`), so these shares are each group's share of the
    gradient in expectation, whatever the batch size.
    """
    raw = {k: frame_weights(g, mean, std, alpha, clip, std_floor) for k, g in signals.items()}
    frames = sum(len(w) for w in raw.values())
    total = sum(float(w.sum()) for w in raw.values())
    return {
        k: {"frame_share": len(w) / frames, "mean_weight": float(w.mean()), "weight_share": float(w.sum()) / total}
        for k, w in raw.items()
    }


def mean_raw_weight(shares: Mapping[str, Mapping[str, float]]) -> float:
    """The mean clipped raw weight over all frames of `shares` (from `weight_shares`): RWFM's normaliser."""
    return sum(s["frame_share"] * s["mean_weight"] for s in shares.values())


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
    1.0 when all weights are equal, 1/B when one sample carries the whole batch, and 0 when every weight
    is 0 (possible with clip_min = 0: the batch teaches nothing).
    """
    w = w.detach().float()
    sum_sq = (w**2).sum()
    return {
        "w_mean": w.mean(),
        "w_std": w.std(unbiased=False),
        "w_p95": torch.quantile(w, 0.95),
        "w_max": w.max(),
        "clipped_frac": clipped.float().mean(),
        "effective_batch_weight": torch.where(sum_sq > 0, w.sum() ** 2 / (w.numel() * sum_sq), 0.0),
    }
