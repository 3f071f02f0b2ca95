"""The length-bucketed batch sampler: coverage, frame budget, determinism, resume, ranks."""

import numpy as np
import pytest

from asr.data.loader import BucketBatchSampler, split_to_multiple


def frame_lengths(n: int, seed: int = 0) -> list[float]:
    """Utterance lengths in 10 ms frames, 0.5 s to 8 s."""
    return np.random.default_rng(seed).uniform(50, 800, size=n).round().tolist()


def within_budget(batch: list[int], lengths: list[float], budget: float) -> bool:
    return len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= budget


def test_every_utterance_once_per_epoch_within_the_frame_budget():
    lengths = frame_lengths(500)
    sampler = BucketBatchSampler(lengths, max_frames=4000, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(500))
        assert all(within_budget(b, lengths, 4000) for b in batches)
        # batches are filled, not fixed-count: sizes vary with length
        assert len({len(b) for b in batches}) > 3


@pytest.mark.parametrize("num_replicas", [2, 3, 4])
def test_ranks_share_each_epoch_exactly_and_equally(num_replicas):
    lengths = frame_lengths(301, seed=num_replicas)
    for epoch in range(3):
        shares = []
        for rank in range(num_replicas):
            sampler = BucketBatchSampler(lengths, 3000, seed=5, num_replicas=num_replicas, rank=rank)
            sampler.set_epoch(epoch)
            shares.append(list(sampler))
        assert len({len(share) for share in shares}) == 1, "every rank must take the same number of steps"
        seen = [i for share in shares for b in share for i in b]
        assert sorted(seen) == list(range(301)), "each utterance exactly once across ranks"
        assert all(within_budget(b, lengths, 3000) for share in shares for b in share)


def test_split_to_multiple_splits_the_largest_batches():
    batches = [[0], [1, 2, 3, 4], [5, 6]]
    split = split_to_multiple(batches, 2)
    assert split == [[0], [1, 2], [3, 4], [5, 6]]
    assert split_to_multiple(batches, 3) == batches
    # nothing left to split: pad with empty batches rather than drop or repeat an utterance
    assert split_to_multiple([[0], [1], [2]], 2) == [[0], [1], [2], []]
    assert split_to_multiple([[0], [1], [2], [3, 4]], 3) == [[0], [1], [2], [3], [4], []]


def test_more_ranks_than_utterances_is_an_error():
    with pytest.raises(ValueError, match="at least one each"):
        BucketBatchSampler([100.0, 200.0], 1000, num_replicas=3, rank=0)


def test_same_seed_same_order_new_epoch_new_order():
    lengths = frame_lengths(200, seed=1)
    a = BucketBatchSampler(lengths, 2000, seed=7)
    b = BucketBatchSampler(lengths, 2000, seed=7)
    c = BucketBatchSampler(lengths, 2000, seed=8)
    for s in (a, b, c):
        s.set_epoch(0)
    epoch0 = list(a)
    assert epoch0 == list(b)
    assert epoch0 != list(c)
    a.set_epoch(1)
    epoch1 = list(a)
    assert epoch1 != epoch0
    # shuffled within buckets too: some utterances share a batch with different neighbours
    pairs = lambda batches: {frozenset(b) for b in batches}  # noqa: E731
    assert pairs(epoch1) != pairs(epoch0)


@pytest.mark.parametrize("num_replicas", [1, 2])
def test_resume_mid_epoch_continues_with_the_remaining_batches(num_replicas):
    lengths = frame_lengths(240, seed=2)
    for rank in range(num_replicas):
        full = BucketBatchSampler(lengths, 2500, seed=11, num_replicas=num_replicas, rank=rank)
        full.set_epoch(2)
        whole = list(full)
        resumed = BucketBatchSampler(lengths, 2500, seed=11, num_replicas=num_replicas, rank=rank)  # a fresh process
        resumed.set_epoch(2, start_batch=7)
        assert list(resumed) == whole[7:]
        assert len(resumed) == len(whole) - 7


def test_sortagrad_first_epoch_is_shortest_first_then_shuffled():
    lengths = frame_lengths(300, seed=4)
    sampler = BucketBatchSampler(lengths, 3000, seed=1, sortagrad=True)
    sampler.set_epoch(0)
    longest = [max(lengths[i] for i in b) for b in sampler]
    assert longest == sorted(longest)
    sampler.set_epoch(1)
    longest = [max(lengths[i] for i in b) for b in sampler]
    assert longest != sorted(longest)
    # with two ranks each rank's share of epoch 0 is sorted too
    share = BucketBatchSampler(lengths, 3000, seed=1, sortagrad=True, num_replicas=2, rank=1)
    longest = [max(lengths[i] for i in b) for b in share]
    assert longest == sorted(longest)


def test_a_budget_below_every_utterance_still_shares_equally():
    lengths = frame_lengths(7, seed=9)
    shares = []
    for rank in range(2):
        sampler = BucketBatchSampler(lengths, max_frames=10, seed=0, num_replicas=2, rank=rank)  # each alone
        shares.append(list(sampler))
    assert len(shares[0]) == len(shares[1]) == 4
    assert sorted(i for share in shares for b in share for i in b) == list(range(7))
    assert sum(b == [] for share in shares for b in share) == 1
