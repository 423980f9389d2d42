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
    mean_weight = sum(x["frame_share"] * x["mean_weight"] for x in shares.values())
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


def test_weight_shares_clip_at_the_bound_and_floor_the_std():
    signal = {"clean": np.array([2.0, 1.0]), "cracked": np.array([-2.0])}
    assert rewards.weight_shares(signal, 0.0, 1.0, 5.0, (0.1, 10.0), 0.5)["cracked"]["mean_weight"] == 0.1
    # A std below the floor is replaced by the floor, as in training: A = -2, exp(0.5 * -2).
    low_std = rewards.weight_shares(signal, 0.0, 0.1, 0.5, (0.1, 10.0), 1.0)
    assert low_std["cracked"]["mean_weight"] == pytest.approx(np.exp(-1.0))


# --- chunk advantages (docs/reward_weighting.md, "Chunk advantages: worked example") ---------------------

EP5 = np.zeros(5, dtype=int)
V5 = np.array([0.2, 0.1, -0.5, 0.4, 0.8])  # out-of-episode values of the five frames


def test_chunk_advantage_worked_example_dense_rewards():
    r = np.array([0, 0, -1, 0, 1.0])  # egg cracked at t = 2, task done at t = 4
    assert rewards.returns_to_go(r, EP5, 1.0).tolist() == [0, 0, 0, 1, 1]
    a = rewards.chunk_advantages(r, V5, EP5, horizon=3, gamma=1.0)
    # t = 0, 1 bootstrap from V(s_3), V(s_4); from t = 2 the chunk runs past the episode's end (V = 0 there)
    np.testing.assert_allclose(a, [-0.8, -0.3, 0.5, 0.6, 0.2], atol=1e-12)
    assert rewards.damage_free_chunks(r, EP5, 3).tolist() == [0, 0, 0, 1, 1]  # the oracle's weights


def test_chunk_advantage_worked_example_sparse_rewards():
    r = rewards.sparse_step_rewards(EP5, np.full(5, -1.0))  # no next.reward, quality cracked: R_e = -1 at the end
    assert r.tolist() == [0, 0, 0, 0, -1]
    a = rewards.chunk_advantages(r, V5, EP5, horizon=3, gamma=1.0)
    np.testing.assert_allclose(a, [0.2, 0.7, -0.5, -1.4, -1.8], atol=1e-12)
    # over chunks that tile the episode (t = 0, 3) the advantages telescope to R_e - V(s_0)
    assert a[0] + a[3] == pytest.approx(-1.0 - V5[0])


def test_chunk_advantage_discounts_and_stops_at_episode_boundaries():
    r = np.array([0, 0, -1, 0, 1.0])
    np.testing.assert_allclose(rewards.returns_to_go(r, EP5, 0.5), [-0.1875, -0.375, -0.75, 0.5, 1.0])
    a = rewards.chunk_advantages(r, V5, EP5, horizon=3, gamma=0.5)
    np.testing.assert_allclose(a, [-0.4, -0.5, -0.25, 0.1, 0.2], atol=1e-12)
    # two episodes back to back: each computed as if alone (no reward or value crosses the boundary)
    ep = np.r_[EP5, EP5 + 1]
    both = rewards.chunk_advantages(np.r_[r, -r], np.r_[V5, V5[::-1]], ep, 3, 1.0)
    np.testing.assert_allclose(both[:5], rewards.chunk_advantages(r, V5, EP5, 3, 1.0))
    np.testing.assert_allclose(both[5:], rewards.chunk_advantages(-r, V5[::-1], EP5, 3, 1.0))
    assert rewards.returns_to_go(np.r_[r, -r], ep, 1.0).tolist() == [0, 0, 0, 1, 1, 0, 0, 0, -1, -1]
    assert rewards.damage_free_chunks(np.r_[r, -r], ep, 3).tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0, 0]


def test_credit_horizon_worked_example():
    # the harm is done at t = 1-2 (a descent stopped too high); the crack shows at t = 4; V cannot foresee it
    r, ep = np.array([0, 0, 0, 0, -1, 0.0]), np.zeros(6, dtype=int)
    v = np.array([-0.5, -0.5, -0.5, -0.5, -0.5, 0.0])
    np.testing.assert_allclose(rewards.chunk_advantages(r, v, ep, 2, 1.0), [0, 0, 0, -0.5, -0.5, 0], atol=1e-12)
    np.testing.assert_allclose(rewards.chunk_advantages(r, v, ep, 4, 1.0), [0, -0.5, -0.5, -0.5, -0.5, 0], atol=1e-12)
    assert rewards.damage_free_chunks(r, ep, 2).tolist() == [1, 1, 1, 0, 0, 1]
    assert rewards.damage_free_chunks(r, ep, 4).tolist() == [1, 0, 0, 0, 0, 1]


def test_chunk_q_worked_example():
    """docs/reward_weighting.md, "Chunk values per phase": a value model that foresees the sloppy descent
    excuses it under `chunk_advantage`; `chunk_q`, compared within the phase, does not."""
    ep, horizon = np.zeros(6, dtype=int), 2
    r_clean, v_clean = np.array([0, 0, 0, 0, 0, 1.0]), np.array([0, 0, 0, 1, 1, 1.0])
    r_sloppy, v_sloppy = np.array([0, 0, 0, 0, -1, 0.0]), np.array([0, 0, 0, -1, -1, 0.0])
    q_clean = rewards.chunk_q(r_clean, v_clean, ep, horizon, 1.0)
    q_sloppy = rewards.chunk_q(r_sloppy, v_sloppy, ep, horizon, 1.0)
    np.testing.assert_allclose(q_clean, [0, 1, 1, 1, 1, 1], atol=1e-12)
    np.testing.assert_allclose(q_sloppy, [0, -1, -1, -1, -1, 0], atol=1e-12)
    a_clean = rewards.chunk_advantages(r_clean, v_clean, ep, horizon, 1.0)
    a_sloppy = rewards.chunk_advantages(r_sloppy, v_sloppy, ep, horizon, 1.0)
    np.testing.assert_allclose(a_clean, [0, 1, 1, 0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(a_sloppy, [0, -1, -1, 0, 0, 0], atol=1e-12)
    assert rewards.normaliser("chunk_q", 0.3, 0.7) == (0.3, 0.7)
    groups = np.r_[rewards.progress_bins(ep, 3), rewards.progress_bins(ep, 3)]  # [0, 0, 1, 1, 2, 2] twice
    last = {}
    for kind, g in (("chunk_advantage", np.r_[a_clean, a_sloppy]), ("chunk_q", np.r_[q_clean, q_sloppy])):
        w = rewards.per_group_normalised(rewards.frame_weights(g, g.mean(), g.std(), 2.0, (0.0, 1e6), 0.1, kind), groups)
        last[kind] = w[10:].sum() / (w[4:6].sum() + w[10:].sum())  # the sloppy share of the last phase
    assert last["chunk_advantage"] == pytest.approx(0.5)
    assert last["chunk_q"] == pytest.approx(0.0512, abs=1e-4)


def test_chunk_advantage_worked_example_weights():
    a = np.array([-0.8, -0.3, 0.5, 0.6, 0.2])
    # not centred: scale = root mean square of A = sqrt(mean^2 + std^2)
    centre, scale = rewards.normaliser("chunk_advantage", a.mean(), a.std())
    assert centre == 0.0 and scale == pytest.approx(0.525357, abs=1e-6)
    w = rewards.frame_weights(a, a.mean(), a.std(), alpha=2.0, clip=(0.0, 10.0), std_floor=0.25, kind="chunk_advantage")
    np.testing.assert_allclose(w, [0.047570, 0.319154, 6.709118, 9.817446, 2.141244], atol=1e-6)
    # the floor bounds the scale from below, as for outcome
    assert rewards.frame_weights(a, a.mean(), a.std(), 2.0, (0.0, 10.0), 1.0, "chunk_advantage")[0] == pytest.approx(
        math.exp(-1.6)
    )
    assert rewards.normaliser("outcome", 0.3, 0.7) == (0.3, 0.7)
    with pytest.raises(ValueError, match="unknown return signal"):
        rewards.normaliser("bogus", 0.0, 1.0)


def test_oracle_signal_is_the_weight_and_outcome_is_bit_identical():
    g = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    w, clipped = rewards.signal_weights(g, "oracle", 0.5, 0.5, 4.0, (0.1, 10.0), 1.0, mean_weight=0.5)
    assert w.tolist() == [0.0, 2.0, 2.0, 0.0] and not clipped.any()
    g = torch.tensor([2.0, 1.0, -1.0, -2.0], dtype=torch.float64)
    w, clipped = rewards.signal_weights(g, "outcome", 0.5, 1.5, 0.25, (0.7, 10.0), 1.0, 0.962433)
    w0, clipped0 = rewards.rwfm_weights(rewards.advantage(g, 0.5, 1.5, 1.0), 0.25, 0.7, 10.0, 0.962433)
    assert torch.equal(w, w0) and torch.equal(clipped, clipped0)


def test_config_signals_match_rewards():
    import typing

    from crab.training.config import RewardWeightingConfig

    assert typing.get_args(typing.get_type_hints(RewardWeightingConfig)["signal"]) == rewards.SIGNALS


def test_chunk_advantage_keeps_damage_near_zero_when_most_episodes_are_bad():
    """The spec's example: 1 clean and 9 cracked episodes of 100 frames, alike until a release chunk of 10
    frames; the baseline V = -0.8 cannot foresee the release, so A = +1.8 (clean) or -0.2 (cracked) there."""
    release = lambda a: np.r_[np.zeros(90), np.full(10, a)]  # noqa: E731
    a = {"clean": release(1.8), "cracked approach": np.zeros(810), "cracked release": np.full(90, -0.2)}
    every = np.concatenate(list(a.values()))
    shares = rewards.weight_shares(a, every.mean(), every.std(), 4.0, (0.0, 10.0), 0.1, "chunk_advantage")
    assert {k: round(s["weight_share"], 4) for k, s in shares.items()} == {
        "clean": 0.1897, "cracked approach": 0.8089, "cracked release": 0.0013,
    }  # fmt: skip
    # the default floor 1 (reward units) is above this RMS of 0.19 and lets the crack keep 3.9%
    floor_1 = rewards.weight_shares(a, every.mean(), every.std(), 4.0, (0.0, 10.0), 1.0, "chunk_advantage")
    assert round(floor_1["cracked release"]["weight_share"], 4) == 0.0389
    # outcome weighting of the same data: the cracked episodes keep 28.8%, clip_max capping the clean one
    g = {"clean": np.ones(100), "cracked": -np.ones(900)}
    outcome = rewards.weight_shares(g, -0.8, 0.6, 4.0, (0.0, 10.0), 1.0)
    assert round(outcome["cracked"]["weight_share"], 4) == 0.2880
    # an expectile-0.9 baseline (V = 0 before the release): A = +1 / -1 there, the crack keeps ~0
    a = {"clean": release(1.0), "cracked approach": np.zeros(810), "cracked release": np.full(90, -1.0)}
    every = np.concatenate(list(a.values()))
    for floor, share in ((0.1, 2.89e-7), (1.0, 0.001646)):
        shares = rewards.weight_shares(a, every.mean(), every.std(), 4.0, (0.0, 10.0), floor, "chunk_advantage")
        assert shares["cracked release"]["weight_share"] == pytest.approx(share, rel=1e-3)


def test_per_phase_normalisation_worked_example():
    """docs/reward_weighting.md, "Per-phase normalisation": two episodes of 4 frames in 2 phases."""
    ep = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    assert rewards.progress_bins(ep, 2).tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1]
    assert rewards.progress_bins(ep, 4).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2]
    # A clean episode (weight 1 throughout) and a damaged one whose second half weighs 0.
    v = np.array([1, 1, 1, 1, 1, 1, 0, 0.0])
    w = rewards.per_group_normalised(v, rewards.progress_bins(ep[:8], 2))
    assert w.tolist() == [1, 1, 2, 2, 1, 1, 0, 0]  # the clean release keeps the phase's whole share
    assert w.mean() == 1.0


def test_unlocated_failures_worked_example():
    """docs/reward_weighting.md, "Failures nothing locates": a success, a damaged episode, two failures."""
    r = np.array([0, 0, 1, 0, -1, 0, 0, 0, 0.0])
    ep = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3])
    success = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0.0])
    assert rewards.unlocated_failures(r, ep, success).tolist() == [False] * 6 + [True] * 3
    # A success label locates it even with no positive reward (labelled a success, and damaged).
    assert not rewards.unlocated_failures(np.zeros(2), np.zeros(2, int), np.ones(2)).any()
    assert rewards.unlocated_failures(np.zeros(0), np.zeros(0, int), np.zeros(0)).shape == (0,)
    # A positive step reward locates it too, whatever the success label says (R_e > 0 comes from one).
    assert not rewards.unlocated_failures(np.array([0, 0.5]), np.zeros(2, int), np.zeros(2)).any()


def test_per_group_normalisation_leaves_a_zero_group_at_zero_and_others_at_mean_one():
    w = rewards.per_group_normalised(np.array([0, 0, 2, 6, 4.0]), np.array([7, 7, 3, 3, 3]))
    assert w.tolist() == [0, 0, 0.5, 1.5, 1.0]
