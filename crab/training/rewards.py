"""Pure reward math of RWFM. Every formula here is specified in `docs/reward_weighting.md`.

Two halves:
- per-dataset annotation (NumPy, vectorised over all frames once): step reward, chunk return and
  episode reward (the return signal G that the advantage normalises);
- per-batch weighting (torch, stays on the device, no host synchronisation): advantage, RWFM weights
  with clipping and normalisation by the training data's mean weight, and the weight statistics that
  the trainer logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# The fields every training item carries: the guide's five, then `signal`, the return signal G that
# this run's weights are computed from (`reward_weighting.signal`; equal to `episode_reward` for `outcome`).
REWARD_FIELDS = ("step_reward", "chunk_return", "episode_reward", "episode_success", "episode_damage", "signal")

# Kinds of return signal G (`reward_weighting.signal`, docs/reward_weighting.md):
# - outcome: G = R_e, the episode's reward on each of its frames;
# - chunk_advantage: G = A_t, the chunk's reward plus the bootstrapped value after it, minus the value
#   before it, with an out-of-episode value model (crab.training.value_fit);
# - chunk_q: G = Q_t, the chunk's reward plus the bootstrapped value after it, with no baseline subtracted:
#   with per-phase draws each (task, part of the episode)'s chunks are compared with one another;
# - oracle: G = 0 for the chunks whose steps (up to the credit horizon) include a damage step (a negative
#   step reward), 1 elsewhere; G is then the weight itself (for benchmarks that know where the damage is).
# The per-chunk signals look `credit_horizon` steps ahead (`reward_weighting.credit_horizon`, by default
# the action chunk).
SIGNALS = ("outcome", "chunk_advantage", "chunk_q", "oracle")
VALUE_SIGNALS = ("chunk_advantage", "chunk_q")  # the signals that need a value file (crab.training.value_fit)


@dataclass(frozen=True)
class RewardSpec:
    """Constants of the reward definition; they are part of the statistics fingerprint."""

    chunk_size: int = 50  # H: the policy's action chunk (SmolVLA's default chunk_size)
    gamma: float = 1.0  # discount inside a chunk
    damage_penalty: float = 1.0  # lambda_d in R_e = success - lambda_d * damage

    def horizon(self, credit_horizon: int | None) -> int:
        """The per-chunk signals' credit horizon: `reward_weighting.credit_horizon`, else the action chunk.
        (A setting of the signal, not of the reward: `outcome` statistics do not depend on it.)"""
        return credit_horizon or self.chunk_size


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


def returns_to_go(step_reward: np.ndarray, episode_index: np.ndarray, gamma: float) -> np.ndarray:
    """R_t = sum_{j >= t} gamma^(j-t) r_j up to the end of t's episode: the value model's target.

    One backward pass over the frames (frames of one episode contiguous and in order).
    """
    out = np.zeros(len(step_reward), dtype=np.float64)
    running = 0.0
    for t in range(len(step_reward) - 1, -1, -1):
        if t + 1 == len(step_reward) or episode_index[t + 1] != episode_index[t]:
            running = 0.0  # t is its episode's last frame
        running = step_reward[t] + gamma * running
        out[t] = running
    return out


def chunk_q(
    step_reward: np.ndarray, value: np.ndarray, episode_index: np.ndarray, horizon: int, gamma: float
) -> np.ndarray:
    """Q_t = sum_{k<H} gamma^k r_{t+k} + gamma^H V(s_{t+H}), with V = 0 past t's episode end.

    The H-step return of the action chunk that starts at t: what the chunk earned plus what is still
    expected after it. H is the credit horizon (by default the action chunk; longer when a chunk's harm
    shows only after it, docs/reward_weighting.md). Vectorised like `chunk_returns`.
    """
    n, h = len(step_reward), horizon
    bootstrap = np.zeros(n, dtype=np.float64)
    if h < n:
        same_episode = episode_index[h:] == episode_index[: n - h]
        bootstrap[: n - h] = np.where(same_episode, (gamma**h) * value[h:], 0.0)
    return chunk_returns(step_reward, episode_index, horizon, gamma) + bootstrap


def chunk_advantages(
    step_reward: np.ndarray, value: np.ndarray, episode_index: np.ndarray, horizon: int, gamma: float
) -> np.ndarray:
    """A_t = Q_t - V(s_t) (`chunk_q`): what the chunk earned plus what is still expected after it, against
    what was expected before it."""
    return chunk_q(step_reward, value, episode_index, horizon, gamma) - value


def damage_free_chunks(step_reward: np.ndarray, episode_index: np.ndarray, horizon: int) -> np.ndarray:
    """1.0 where none of the steps t..t+H-1 (inside t's episode) has a negative reward, else 0.0; H is the
    credit horizon, as in `chunk_advantages`."""
    n = len(step_reward)
    free = np.ones(n, dtype=np.float64)
    for k in range(min(horizon, n)):
        damaged = (episode_index[k:] == episode_index[: n - k]) & (step_reward[k:] < 0)
        free[: n - k][damaged] = 0.0
    return free


def episode_spans(episode_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first frame, number of frames) of each episode, frames of one episode contiguous and in order."""
    n = len(episode_index)
    starts = np.flatnonzero(np.r_[True, episode_index[1:] != episode_index[:-1]]) if n else np.zeros(0, int)
    return starts, np.diff(np.r_[starts, n])


def unlocated_failures(step_reward: np.ndarray, episode_index: np.ndarray, episode_success: np.ndarray) -> np.ndarray:
    """True on every frame of an episode that neither succeeded (`episode_success` 0, per frame) nor holds a
    non-zero step reward: a failure the data does not locate (a missed grasp, a grip too weak to lift). A
    negative step reward places damage in time; a positive one is progress or success the data records
    (`R_e > 0` comes from one), even where a success label says 0.

    A per-chunk signal can only blame what it can place in time: a damage step, or a state the value model
    sees is doomed. Nothing marks when such an episode went wrong, so none of its chunks can be told good
    from bad (`reward_weighting.unlocated_failures: drop` leaves them out of the draw, as filtering would).
    """
    starts, lengths = episode_spans(episode_index)
    located = np.logical_or.reduceat(step_reward != 0, starts) if len(starts) else np.zeros(0, bool)
    return np.repeat(~located, lengths) & (episode_success <= 0)


def normaliser(kind: str, mean: float, std: float) -> tuple[float, float]:
    """(centre, scale) of the advantage (G - centre) / max(scale, std_floor), from the frame-level mean
    and (population) std of G over the manifest.

    `outcome` centres on the mean outcome. `chunk_advantage` is already centred per state by its value
    baseline, so it is not centred again (on data that is mostly bad the mean would make damage look
    average); its scale is the root mean square of A, sqrt(mean^2 + std^2). `chunk_q` is normalised like
    `outcome`; drawn per phase without an upper clip its centre cancels (`per_group_normalised`).
    """
    if kind in ("outcome", "chunk_q"):
        return mean, std
    if kind == "chunk_advantage":
        return 0.0, float(np.hypot(mean, std))
    raise ValueError(f"unknown return signal {kind!r}; known: {list(SIGNALS)}")


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


def signal_weights(
    signal: Tensor,
    kind: str,
    mean: float,
    std: float,
    alpha: float,
    clip: tuple[float, float],
    std_floor: float,
    mean_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """RWFM weights (and clipped flags) from the return signal G of kind `kind` (`SIGNALS`), with the
    manifest's frame-level `mean` and `std` of G: `rwfm_weights` of the normalised advantage, except for
    `oracle`, whose G is the raw weight itself (0 or 1, never clipped)."""
    if kind == "oracle":
        return signal / mean_weight, torch.zeros_like(signal, dtype=torch.bool)
    centre, scale = normaliser(kind, mean, std)
    return rwfm_weights(advantage(signal, centre, scale, std_floor), alpha, *clip, mean_weight)


def frame_weights(
    signal: np.ndarray,
    mean: float,
    std: float,
    alpha: float,
    clip: tuple[float, float],
    std_floor: float,
    kind: str = "outcome",
    dropped: np.ndarray | None = None,
) -> np.ndarray:
    """The clipped raw weight of each frame (clip(exp(alpha * A), *clip) for an advantage), from its G;
    0 where `dropped` (a mask of the frames: `unlocated_failures: drop`)."""
    g = torch.as_tensor(signal, dtype=torch.float64)
    w = signal_weights(g, kind, mean, std, alpha, clip, std_floor)[0].numpy()
    return w if dropped is None else np.where(dropped, 0.0, w)


def weight_shares(
    signals: Mapping[str, np.ndarray],
    mean: float,
    std: float,
    alpha: float,
    clip: tuple[float, float],
    std_floor: float,
    kind: str = "outcome",
    dropped: Mapping[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Per group of frames (e.g. per dataset or quality): its share of the frames, its mean clipped raw
    weight and its share of the total weight, i.e. how much of the data the weighted loss imitates.
    `dropped` (per group, a mask of its frames) weigh 0 (`unlocated_failures: drop`).

    Weights are divided by one constant (`rwfm_weights`), so these shares are each group's share of the
    gradient in expectation, whatever the batch size.
    """
    raw = {
        k: frame_weights(g, mean, std, alpha, clip, std_floor, kind, None if dropped is None else dropped[k])
        for k, g in signals.items()
    }
    frames = sum(len(w) for w in raw.values())
    total = sum(float(w.sum()) for w in raw.values())
    return {
        k: {"frame_share": len(w) / frames, "mean_weight": float(w.mean()), "weight_share": float(w.sum()) / total if total else 0.0}
        for k, w in raw.items()
    }


def progress_bins(episode_index: np.ndarray, bins: int) -> np.ndarray:
    """Per frame, the part of its episode it falls in: `floor(bins * k / T)` for the k-th (from 0) of the
    episode's T frames, so 0..bins-1 from the start to the end whatever the episode's length (frames of one
    episode contiguous and in order). A task's phases (approach, grasp, carry, release) fall into roughly
    the same bins in every episode without any phase labels."""
    starts, lengths = episode_spans(episode_index)
    k = np.arange(len(episode_index)) - np.repeat(starts, lengths)
    return (bins * k) // np.repeat(lengths, lengths)


def phase_groups(tasks: Sequence[str], episode_index: Sequence[np.ndarray], bins: int) -> list[np.ndarray]:
    """Per dataset (its task and its frames' episode indices): each frame's (task, part of its episode) group
    as one integer, the task's position among the sorted tasks x `bins` + `progress_bins`."""
    order = sorted(set(tasks))
    return [order.index(task) * bins + progress_bins(e, bins) for task, e in zip(tasks, episode_index, strict=True)]


def per_group_normalised(weights: np.ndarray, group: np.ndarray) -> np.ndarray:
    """w_i / (mean of w over i's group), 0 where the whole group weighs 0.

    Each group keeps its share of the frames as its share of the total weight (the mean weight of a group
    is 1), and inside a group the weight still goes to the better frames. With groups = (task, progress
    bin) a moment that only the few good episodes do well (a careful release) keeps the share of training
    it has in imitation learning instead of shrinking with the bad episodes' weight there.
    """
    w = np.asarray(weights, dtype=np.float64)
    _, inverse = np.unique(group, return_inverse=True)
    mean = np.bincount(inverse, w) / np.bincount(inverse)
    per_frame = mean[inverse]
    return np.divide(w, per_frame, out=np.zeros_like(w), where=per_frame > 0)


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
