"""Samplers: batchup's batch contents and shuffling (one permutation per epoch) for a fixed seed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from concurrent_dataloader.batchup import sampling


def chopped(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def assert_batches(got, expected) -> None:
    got = list(got)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_num_batches():
    assert sampling.num_batches(10, 5) == 2
    assert sampling.num_batches(11, 5) == 3
    assert sampling.num_batches(0, 5) == 0
    assert sampling.num_batches(1, 64) == 1


@pytest.mark.parametrize("batch_size", [5, 6, 7, 10, 64])
def test_standard_sampler_in_order_and_shuffled(batch_size):
    s = sampling.StandardSampler(10)
    assert s.num_indices_generated() == 10
    assert_batches(s.in_order_indices_batch_iterator(batch_size), chopped(np.arange(10), batch_size))
    order = np.random.RandomState(12345).permutation(10)
    assert_batches(s.shuffled_indices_batch_iterator(batch_size, np.random.RandomState(12345)),
                   chopped(order, batch_size))


@pytest.mark.parametrize("batch_size,n_batches", [(5, 6), (7, 5), (64, 1)])
def test_standard_sampler_repeats_concatenate_epochs(batch_size, n_batches):
    s = sampling.StandardSampler(10, repeats=3)
    assert s.num_indices_generated() == 30
    assert_batches(s.in_order_indices_batch_iterator(batch_size), chopped(np.tile(np.arange(10), 3), batch_size))
    ref = np.random.RandomState(12345)
    order = np.concatenate([ref.permutation(10) for _ in range(3)])
    batches = list(s.shuffled_indices_batch_iterator(batch_size, np.random.RandomState(12345)))
    assert len(batches) == n_batches
    assert_batches(batches, chopped(order, batch_size))


def test_batchup_example_last_batch_short_with_repeats():
    # The exact layout of batchup's own test: 10 samples, 3 repeats, batches of 7.
    s = sampling.StandardSampler(10, repeats=3)
    b = list(s.in_order_indices_batch_iterator(7))
    assert [x.tolist() for x in b] == [list(range(7)), [7, 8, 9, 0, 1, 2, 3], [4, 5, 6, 7, 8, 9, 0],
                                       list(range(1, 8)), [8, 9]]


def test_infinite_repeats_small_dataset_big_batches():
    s = sampling.StandardSampler(20, repeats=-1)
    assert s.num_indices_generated() == np.inf
    got = np.concatenate(list(itertools.islice(s.in_order_indices_batch_iterator(64), 10)))
    np.testing.assert_array_equal(got, np.tile(np.arange(20), 32))
    ref = np.random.RandomState(12345)
    expected = np.concatenate([ref.permutation(20) for _ in range(32)])
    got = list(itertools.islice(s.shuffled_indices_batch_iterator(64, np.random.RandomState(12345)), 10))
    assert all(len(b) == 64 for b in got)
    np.testing.assert_array_equal(np.concatenate(got), expected)


@pytest.mark.parametrize("repeats,batch_size", [(1, 4), (3, 4), (3, 5), (2, 3), (4, 64)])
def test_shuffle_leaves_a_shared_rng_where_batchup_does(repeats, batch_size):
    # batchup draws one permutation per epoch, plus one more whenever an epoch runs out while
    # a batch is being filled (also after the last epoch). Matching it keeps later epochs
    # drawn from the same RandomState identical to batchup's.
    n = 9
    rng = np.random.RandomState(7)
    list(sampling.StandardSampler(n, repeats=repeats).shuffled_indices_batch_iterator(batch_size, rng))
    ref = np.random.RandomState(7)
    draws = 1 if repeats == 1 else repeats + 1
    for _ in range(draws):
        ref.permutation(n)
    assert rng.randint(1 << 30) == ref.randint(1 << 30)


def test_shuffled_iterator_is_lazy():
    rng = np.random.RandomState(3)
    it = sampling.StandardSampler(10).shuffled_indices_batch_iterator(4, rng)
    assert rng.randint(1 << 30) == np.random.RandomState(3).randint(1 << 30)  # nothing drawn yet
    next(it)


def test_subset_sampler():
    indices = np.random.RandomState(12345).permutation(20)[:10]
    s = sampling.SubsetSampler(indices, repeats=2)
    assert s.num_indices_generated() == 20
    np.testing.assert_array_equal(s.map_indices(np.array([0, 3])), indices[[0, 3]])
    assert_batches(s.in_order_indices_batch_iterator(6), chopped(np.tile(indices, 2), 6))
    ref = np.random.RandomState(12345)
    # batchup shuffles with rng.permutation(indices); indexing with permutation(N) is the same draw.
    expected = np.concatenate([ref.permutation(indices) for _ in range(2)])
    assert_batches(s.shuffled_indices_batch_iterator(6, np.random.RandomState(12345)), chopped(expected, 6))


def test_subset_batches_do_not_alias_the_index_array():
    indices = np.arange(10, 20)
    s = sampling.SubsetSampler(indices)
    for b in s.in_order_indices_batch_iterator(4):
        b[:] = -1
    np.testing.assert_array_equal(s.indices, np.arange(10, 20))


def test_weighted_sampler_draws_like_rng_choice():
    w = np.array([0.1, 0.2, 0.3, 0.4])
    s = sampling.WeightedSampler(w)
    assert s.num_indices_generated() == np.inf
    got = list(itertools.islice(s.shuffled_indices_batch_iterator(5, np.random.RandomState(1)), 3))
    ref = np.random.RandomState(1)
    for b in got:
        np.testing.assert_array_equal(b, ref.choice(4, size=(5,), p=w))
    with pytest.raises(NotImplementedError):
        s.in_order_indices_batch_iterator(5)
    with pytest.raises(ValueError, match="sum to 0"):
        sampling.WeightedSampler(np.zeros(3))
    with pytest.raises(ValueError, match="non-negative"):
        sampling.WeightedSampler(np.array([1.0, -1.0]))


def test_weighted_subset_sampler():
    indices = np.array([3, 7, 11])
    w = np.array([1.0, 0.0, 3.0])
    s = sampling.WeightedSubsetSampler(w, indices)
    batch = next(s.shuffled_indices_batch_iterator(200, np.random.RandomState(0)))
    assert set(batch.tolist()) <= {3, 11}
    ref = np.random.RandomState(0).choice(indices, size=(200,), p=w / w.sum())
    np.testing.assert_array_equal(batch, ref)
    np.testing.assert_array_equal(s.map_indices(np.array([2, 0])), [11, 3])
    with pytest.raises(NotImplementedError):
        s.in_order_indices_batch_iterator(5)
    with pytest.raises(ValueError, match="same length"):
        sampling.WeightedSubsetSampler(np.ones(2), indices)


def test_class_balancing():
    y = np.array([0, 0, 0, 0, 0, 0, 2, 2, 3])  # class 1 unused
    w = sampling.WeightedSampler.class_balancing_sample_weights(y)
    assert np.isfinite(w).all()
    assert np.isclose(w.sum(), 1.0)
    for c in (0, 2, 3):
        assert np.isclose(w[y == c].sum(), 1 / 3)
    s = sampling.WeightedSampler.class_balancing_sampler(y)
    drawn = next(s.shuffled_indices_batch_iterator(30000, np.random.RandomState(0)))
    frac = np.bincount(y[drawn], minlength=4) / len(drawn)
    np.testing.assert_allclose(frac, [1 / 3, 0, 1 / 3, 1 / 3], atol=0.02)
    sub = sampling.WeightedSubsetSampler.class_balancing_sampler(y, np.array([0, 1, 6, 8]))
    np.testing.assert_allclose(sub.sub_weights, [1 / 6, 1 / 6, 1 / 3, 1 / 3])


def test_bad_arguments():
    for bad in (0, -2):
        with pytest.raises(ValueError, match="repeats"):
            sampling.StandardSampler(10, repeats=bad)
        with pytest.raises(ValueError, match="repeats"):
            sampling.SubsetSampler(np.arange(3), repeats=bad)
    with pytest.raises(ValueError, match="batch_size"):
        sampling.StandardSampler(10).in_order_indices_batch_iterator(0)
    with pytest.raises(ValueError, match="1-D"):
        sampling.SubsetSampler(np.zeros((2, 2), dtype=int))
    with pytest.raises(TypeError, match="integer"):
        sampling.SubsetSampler(np.array([0.5, 1.5]))
    # An empty data set repeated forever would spin without yielding: refuse it.
    with pytest.raises(ValueError, match="empty"):
        sampling.StandardSampler(0, repeats=-1).in_order_indices_batch_iterator(4)
    assert list(sampling.StandardSampler(0, repeats=3).in_order_indices_batch_iterator(4)) == []
