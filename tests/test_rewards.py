"""The worked example of docs/reward_weighting.md, number for number, and the pure reward math."""

import math

import numpy as np
import pytest
import torch

from crab.training import rewards


def test_annotation_worked_example_sparse_from_quality():
    ep = np.zeros(4, dtype=int)
    success, damage = rewards.QUALITY_LABELS["cracked"]
    r_e = rewards.episode_reward_from_labels(np.array([success]), np.array([damage]), damage_penalty=1.0)
    assert r_e.tolist() == [-1.0]
    step = rewards.sparse_step_rewards(ep, np.full(4, r_e[0]))
    assert step.tolist() == [0, 0, 0, -1]
    chunk = rewards.chunk_returns(step, ep, chunk_size=3, gamma=1.0)
    assert chunk.tolist() == [0, -1, -1, -1]


def test_annotation_worked_example_step_rewards():
    ep = np.zeros(4, dtype=int)
    chunk = rewards.chunk_returns(np.array([0, -1, 0, 1.0]), ep, chunk_size=3, gamma=1.0)
    assert chunk.tolist() == [-1, 0, 1, 1]


def test_chunk_return_stops_at_episode_boundary_and_discounts():
    ep = np.array([0, 0, 1, 1, 1])
    step = np.array([1.0, 2.0, 10.0, 20.0, 40.0])
    assert rewards.chunk_returns(step, ep, 2, 0.5).tolist() == [2.0, 2.0, 20.0, 40.0, 40.0]
    assert rewards.sparse_step_rewards(ep, np.array([3.0, 3.0, 5.0, 5.0, 5.0])).tolist() == [0, 3, 0, 0, 5]


def test_weights_worked_example():
    g = torch.tensor([2.0, 1.0, -1.0, -2.0], dtype=torch.float64)
    a = rewards.advantage(g, mean=0.5, std=1.5, std_floor=1.0)
    torch.testing.assert_close(a, torch.tensor([1.0, 1 / 3, -1.0, -5 / 3], dtype=torch.float64))
    # The four frames are the whole training set: the normaliser is their mean clipped raw weight.
    shares = rewards.weight_shares({"all": g.numpy()}, 0.5, 1.5, alpha=0.25, clip=(0.7, 10.0), std_floor=1.0)
    mean_weight = rewards.mean_raw_weight(shares)
    assert mean_weight == pytest.approx(0.962433, abs=1e-6)
    w, clipped = rewards.rwfm_weights(a, alpha=0.25, clip_min=0.7, clip_max=10.0, mean_weight=mean_weight)
    expected = torch.tensor([1.334146, 1.129330, 0.809200, 0.727324], dtype=torch.float64)
    torch.testing.assert_close(w, expected, atol=1e-6, rtol=0)
    assert clipped.tolist() == [False, False, False, True]
    loss = (w * torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)).mean()
    assert loss.item() == pytest.approx(1.581025, abs=1e-6)
    stats = {k: v.item() for k, v in rewards.weight_statistics(w, clipped).items()}
    assert stats == pytest.approx(
        {
            "w_mean": 1.0,
            "w_std": 0.244508,
            "w_p95": 1.303424,
            "w_max": 1.334146,
            "clipped_frac": 0.25,
            "effective_batch_weight": 0.943588,
        },
        abs=1e-6,
    )
    # The same frame has the same weight in a batch of one: nothing depends on the batch.
    alone, _ = rewards.rwfm_weights(a[3:], alpha=0.25, clip_min=0.7, clip_max=10.0, mean_weight=mean_weight)
    assert alone.item() == pytest.approx(0.727324, abs=1e-6)


def test_std_floor_keeps_uniform_quality_data_from_large_advantages():
    g = torch.tensor([1.0, 1.0, 0.9])  # nearly uniform quality (e.g. one partial success among clean episodes)
    torch.testing.assert_close(rewards.advantage(g, mean=0.998, std=0.014, std_floor=1.0), g - 0.998)
    torch.testing.assert_close(rewards.advantage(g, mean=1.0, std=2.0, std_floor=1.0), (g - 1.0) / 2.0)


def test_weights_without_batch_normalisation_and_effective_weight_bounds():
    w, clipped = rewards.rwfm_weights(torch.zeros(3), alpha=0.25, clip_min=0.1, clip_max=10.0)
    assert w.tolist() == [1.0, 1.0, 1.0] and not clipped.any()
    assert rewards.weight_statistics(w, clipped)["effective_batch_weight"].item() == pytest.approx(1.0)
    one_hot = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert rewards.weight_statistics(one_hot, torch.zeros(4, dtype=torch.bool))["effective_batch_weight"].item() == pytest.approx(0.25)


def test_zero_clip_floor_lets_weights_reach_zero_and_an_all_zero_batch_is_defined():
    adv = torch.tensor([0.5, -1.5, -200.0])  # exp(4 * -200) underflows to 0
    w, clipped = rewards.rwfm_weights(adv, alpha=4.0, clip_min=0.0, clip_max=10.0, mean_weight=2.0)
    raw = torch.tensor([math.exp(2.0), math.exp(-6.0), 0.0])
    torch.testing.assert_close(w, raw / 2.0)
    assert not clipped.any()
    w, clipped = rewards.rwfm_weights(torch.full((2,), -200.0), alpha=4.0, clip_min=0.0, clip_max=10.0, mean_weight=2.0)
    assert w.tolist() == [0.0, 0.0]
    stats = rewards.weight_statistics(w, clipped)
    assert all(torch.isfinite(v) for v in stats.values())  # the trainer stops on a non-finite metric
    assert stats["effective_batch_weight"].item() == 0.0 and stats["w_max"].item() == 0.0


def test_weight_shares_hand_checked():
    # mean 0.5, std 0.866 < floor 1: A = 0.5 (clean), -1.5 (cracked); alpha 1: e^0.5 = 1.648721, e^-1.5 = 0.223130
    shares = rewards.weight_shares(
        {"clean": np.ones(3), "cracked": -np.ones(1)}, 0.5, 0.866, alpha=1.0, clip=(0.1, 10.0), std_floor=1.0
    )
    assert shares["clean"] == pytest.approx({"frame_share": 0.75, "mean_weight": 1.648721, "weight_share": 0.956835}, abs=1e-6)
    assert shares["cracked"] == pytest.approx({"frame_share": 0.25, "mean_weight": 0.223130, "weight_share": 0.043165}, abs=1e-6)


def test_task_shares_divide_by_the_task_total():
    shares = {"a": {"weight_share": 0.3}, "b": {"weight_share": 0.1}, "c": {"weight_share": 0.6}, "d": {"weight_share": 0.0}}
    got = rewards.task_shares(shares, {"a": "egg", "b": "egg", "c": "carton", "d": "lid"})
    assert got == pytest.approx({"a": 0.75, "b": 0.25, "c": 1.0, "d": 0.0})


def test_weight_shares_clip_at_the_bound_and_floor_the_std():
    signal = {"clean": np.array([2.0, 1.0]), "cracked": np.array([-2.0])}
    assert rewards.weight_shares(signal, 0.0, 1.0, 5.0, (0.1, 10.0), 0.5)["cracked"]["mean_weight"] == 0.1
    # A std below the floor is replaced by the floor, as in training: A = -2, exp(0.5 * -2).
    low_std = rewards.weight_shares(signal, 0.0, 0.1, 0.5, (0.1, 10.0), 1.0)
    assert low_std["cracked"]["mean_weight"] == pytest.approx(np.exp(-1.0))
