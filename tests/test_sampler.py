"""Sequence windows and padding against a brute-force reference; train/validation split by episode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rf_dp_agents.data import SequenceSampler, episode_masks


def reference_windows(episode_ends, T, pad_before, pad_after, mask):
    """Chi et al.'s loop: for each episode and start, the padded window of buffer indices."""
    out = []
    for i, end in enumerate(episode_ends):
        if not mask[i]:
            continue
        start = 0 if i == 0 else episode_ends[i - 1]
        length = end - start
        for idx in range(-pad_before, length - T + pad_after + 1):
            buf_start, buf_end = max(idx, 0) + start, min(idx + T, length) + start
            sample_start = buf_start - (idx + start)
            sample_end = T - ((idx + T + start) - buf_end)
            window = np.empty(T, dtype=np.int64)
            window[sample_start:sample_end] = np.arange(buf_start, buf_end)
            window[:sample_start] = buf_start
            window[sample_end:] = buf_end - 1
            out.append(window)
    return np.array(out, dtype=np.int64).reshape(-1, T)


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, size=rng.integers(1, 12))
    ends = np.cumsum(lengths)
    T, pad_before, pad_after = int(rng.integers(1, 17)), int(rng.integers(0, 4)), int(rng.integers(0, 9))
    mask = rng.random(len(ends)) < 0.7
    sampler = SequenceSampler(ends, T, pad_before, pad_after, episode_mask=mask)
    expected = reference_windows(ends, T, pad_before, pad_after, mask)
    assert len(sampler) == len(expected)
    ids = np.arange(len(sampler))
    np.testing.assert_array_equal(sampler.indices(ids), expected)
    np.testing.assert_array_equal(sampler.indices(torch.from_numpy(ids)).numpy(), expected)
    if len(sampler):
        np.testing.assert_array_equal(sampler.indices(ids, length=min(2, T)), expected[:, : min(2, T)])


def test_windows_stay_inside_their_episode():
    ends = np.array([10, 11, 30])
    sampler = SequenceSampler(ends, 16, pad_before=1, pad_after=7)
    idx = sampler.indices(np.arange(len(sampler)))
    episode = np.searchsorted(ends, idx, side="right")
    assert (episode == episode[:, :1]).all()
    # An episode shorter than T - pad_before - pad_after has no window (as in the reference sampler).
    assert set(sampler.episode_of_window.tolist()) == {0, 2}


def test_bad_arguments():
    with pytest.raises(ValueError, match="sequence_length"):
        SequenceSampler(np.array([5]), 0)
    with pytest.raises(ValueError, match="episode_mask shape"):
        SequenceSampler(np.array([5, 9]), 4, episode_mask=np.ones(3, bool))


@pytest.mark.parametrize("n", [1, 2, 7, 150])
def test_split_is_disjoint_and_seeded(n):
    train, val = episode_masks(n, 0.1, seed=3)
    assert not (train & val).any() and (train | val).all()
    assert val.sum() == (0 if n == 1 else min(max(1, round(n * 0.1)), n - 1))
    again_train, again_val = episode_masks(n, 0.1, seed=3)
    np.testing.assert_array_equal(val, again_val)
    if n == 150:
        assert not np.array_equal(val, episode_masks(n, 0.1, seed=4)[1])
    limited, limited_val = episode_masks(n, 0.1, seed=3, max_train_episodes=1)
    assert limited.sum() == 1 and not (limited & limited_val).any()
    with pytest.raises(ValueError, match="val_ratio"):
        episode_masks(n, 1.0, seed=0)
