"""Data sources: batchup 0.2.3's documented behaviour, per source, with fixed seeds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from concurrent_dataloader.batchup import data_source, sampling

X = np.arange(45)
Y = np.arange(90).reshape((45, 2))


def _slices(order, batch_size):
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def check(batches, order, batch_size, arrays=(X, Y)):
    expected = _slices(order, batch_size)
    assert len(batches) == len(expected)
    for batch, idx in zip(batches, expected):
        assert isinstance(batch, tuple) and len(batch) == len(arrays)
        for got, arr in zip(batch, arrays):
            np.testing.assert_array_equal(got, arr[idx])


class ListAccessor:
    """An array-like returning lists, as batchup's NonUniformImageFileAccessor does."""

    def __init__(self, n):
        self.n = n
        self.calls = []

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        self.calls.append(np.array(index))
        return [f"item{i}" for i in index]


# -- ArrayDataSource ---------------------------------------------------------------------------

def test_array_data_source_in_order_and_shuffled():
    ads = data_source.ArrayDataSource([X, Y])
    assert ads.is_random_access
    assert ads.num_samples() == 45
    check(list(ads.batch_iterator(batch_size=15)), np.arange(45), 15)
    check(list(ads.batch_iterator(batch_size=15, shuffle=False)), np.arange(45), 15)
    check(list(ads.batch_iterator(batch_size=20)), np.arange(45), 20)  # last batch short
    order = np.random.RandomState(12345).permutation(45)
    check(list(ads.batch_iterator(batch_size=15, shuffle=np.random.RandomState(12345))), order, 15)
    # shuffle=True uses numpy's global RNG
    np.random.seed(12345)
    check(list(ads.batch_iterator(batch_size=15, shuffle=True)), order, 15)


def test_same_seed_same_batches_and_shared_rng_gives_new_epochs():
    ads = data_source.ArrayDataSource([X, Y])
    a = list(ads.batch_iterator(8, shuffle=np.random.RandomState(5)))
    b = list(ads.batch_iterator(8, shuffle=np.random.RandomState(5)))
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p[0], q[0])
    rng = np.random.RandomState(5)
    ref = np.random.RandomState(5)
    for _ in range(3):  # one permutation per epoch from the shared RandomState
        check(list(ads.batch_iterator(8, shuffle=rng)), ref.permutation(45), 8)


def test_samples_by_indices_with_subset():
    Xb, Yb = np.arange(90), np.arange(180).reshape((90, 2))
    indices = np.random.RandomState(0).permutation(90)[:45]
    ads = data_source.ArrayDataSource([Xb, Yb], indices=indices)
    assert ads.num_samples() == 45
    b = ads.samples_by_indices_nomapping(np.arange(15))
    np.testing.assert_array_equal(b[0], Xb[:15])
    b = ads.samples_by_indices(np.arange(15))
    np.testing.assert_array_equal(b[0], Xb[indices[:15]])
    np.testing.assert_array_equal(b[1], Yb[indices[:15]])
    check(list(ads.batch_iterator(15)), indices, 15, (Xb, Yb))
    order = np.random.RandomState(12345).permutation(45)
    check(list(ads.batch_iterator(15, shuffle=np.random.RandomState(12345))), indices[order], 15, (Xb, Yb))


def test_repeats():
    Xr, Yr = np.arange(50), np.arange(100).reshape((50, 2))
    assert data_source.ArrayDataSource([Xr, Yr], repeats=2).num_samples() == 100
    assert data_source.ArrayDataSource([Xr, Yr], repeats=-1).num_samples() == np.inf
    ads3 = data_source.ArrayDataSource([Xr, Yr], repeats=3)
    check(list(ads3.batch_iterator(20)), np.tile(np.arange(50), 3), 20, (Xr, Yr))
    ref = np.random.RandomState(12345)
    order = np.concatenate([ref.permutation(50) for _ in range(3)])
    check(list(ads3.batch_iterator(20, shuffle=np.random.RandomState(12345))), order, 20, (Xr, Yr))
    inf = data_source.ArrayDataSource([Xr, Yr], repeats=-1)
    batches = list(itertools.islice(inf.batch_iterator(20, shuffle=np.random.RandomState(12345)), 5))
    ref = np.random.RandomState(12345)
    check(batches, np.concatenate([ref.permutation(50), ref.permutation(50)]), 20, (Xr, Yr))
    for bad in (0, -2):
        with pytest.raises(ValueError):
            data_source.ArrayDataSource([Xr, Yr], repeats=bad)


def test_include_indices():
    Xb, Yb = np.arange(90), np.arange(180).reshape((90, 2))
    indices = np.random.RandomState(1).permutation(90)[:45]
    ads = data_source.ArrayDataSource([Xb[:45], Yb[:45]], include_indices=True)
    sub = data_source.ArrayDataSource([Xb, Yb], indices=indices, include_indices=True)
    b = sub.samples_by_indices_nomapping(slice(0, 15))
    np.testing.assert_array_equal(b[0], np.arange(15))
    np.testing.assert_array_equal(b[1], Xb[:15])
    b = sub.samples_by_indices(np.arange(15))
    np.testing.assert_array_equal(b[0], indices[:15])
    np.testing.assert_array_equal(b[2], Yb[indices[:15]])
    order = np.random.RandomState(12345).permutation(45)
    for batch, idx in zip(ads.batch_iterator(15, shuffle=np.random.RandomState(12345)), _slices(order, 15)):
        assert len(batch) == 3
        np.testing.assert_array_equal(batch[0], idx)
        np.testing.assert_array_equal(batch[1], Xb[idx])
    for batch, idx in zip(sub.batch_iterator(15), _slices(indices, 15)):
        np.testing.assert_array_equal(batch[0], idx)
        np.testing.assert_array_equal(batch[2], Yb[idx])


def test_sampler_argument():
    sampler = sampling.WeightedSampler(np.r_[np.zeros(40), np.ones(5)])
    ads = data_source.ArrayDataSource([X, Y], sampler=sampler)
    assert ads.num_samples() == np.inf
    for (bx, by) in itertools.islice(ads.batch_iterator(10, shuffle=np.random.RandomState(0)), 4):
        assert (bx >= 40).all()
        np.testing.assert_array_equal(by, Y[bx])
    with pytest.raises(ValueError):
        data_source.ArrayDataSource([X, Y], indices=np.arange(3), sampler=sampler)
    with pytest.raises(ValueError):
        data_source.ArrayDataSource([X, Y], repeats=2, sampler=sampler)
    with pytest.raises(ValueError):
        data_source.ArrayDataSource([X, Y], repeats=-1, sampler=sampler)


def test_array_likes_and_lists():
    acc = ListAccessor(45)
    ads = data_source.ArrayDataSource([acc, X])
    batches = list(ads.batch_iterator(20, shuffle=np.random.RandomState(0)))
    order = np.random.RandomState(0).permutation(45)
    assert [len(b[0]) for b in batches] == [20, 20, 5]
    assert batches[0][0] == [f"item{i}" for i in order[:20]]
    np.testing.assert_array_equal(batches[0][1], order[:20])
    assert all(c.ndim == 1 for c in acc.calls)  # accessors get one index array per batch


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"array 0 has length 20.*array 1 has length 25"):
        data_source.ArrayDataSource([np.arange(20), np.arange(50).reshape((25, 2))])
    with pytest.raises(ValueError, match=r"array 2 has length 3"):
        data_source.ArrayDataSource([np.arange(4), np.arange(4), np.arange(3)])
    with pytest.raises(TypeError, match="list of array-like"):
        data_source.ArrayDataSource(X)
    with pytest.raises(TypeError, match=r"data\[1\] is not array-like"):
        data_source.ArrayDataSource([X, 5])
    with pytest.raises(ValueError, match="at least one"):
        data_source.ArrayDataSource([])
    with pytest.raises(ValueError, match=r"\[0, 45\)"):
        data_source.ArrayDataSource([X], indices=np.array([0, 45]))
    with pytest.raises(TypeError, match="shuffle"):
        list(data_source.ArrayDataSource([X]).batch_iterator(5, shuffle="yes"))


def test_abstract_and_random_access_bases():
    ds = data_source.AbstractDataSource()
    assert not ds.is_random_access
    with pytest.raises(NotImplementedError):
        ds.num_samples()
    with pytest.raises(NotImplementedError):
        ds.batch_iterator(256)
    ra = data_source.RandomAccessDataSource(length=10)
    with pytest.raises(NotImplementedError):
        ra.samples_by_indices_nomapping(slice(None))
    assert [b.tolist() for b in ra.batch_indices_iterator(6)] == [list(range(6)), list(range(6, 10))]


def test_length_and_trim_helpers():
    a, b = np.arange(10), np.arange(20)
    assert data_source._length_of_batch(((a,), b)) == 10
    assert data_source._length_of_batch([a, b]) == 2  # lists are data, tuples are structure
    t = data_source._trim_batch(((a, b), a), 5)
    assert isinstance(t, tuple) and t[0][1].tolist() == list(range(5))
    cb = data_source._trim_batch(data_source.ChoiceBatch(np.arange(8), 2), 3)
    assert isinstance(cb, data_source.ChoiceBatch) and cb.ds_index == 2 and cb.sample_indices.tolist() == [0, 1, 2]


# -- Callable / Iterator -----------------------------------------------------------------------

def make_batch_iterator_callable(*arrays):
    def batch_iterator(batch_size, shuffle=None):
        return data_source.ArrayDataSource(list(arrays)).batch_iterator(batch_size, shuffle=shuffle)
    return batch_iterator


def test_callable_data_source():
    cds = data_source.CallableDataSource(make_batch_iterator_callable(X, Y))
    assert not cds.is_random_access
    assert cds.num_samples() is None
    check(list(cds.batch_iterator(15)), np.arange(45), 15)
    check(list(cds.batch_iterator(15, shuffle=np.random.RandomState(12345))),
          np.random.RandomState(12345).permutation(45), 15)
    seen = {}

    def fn(batch_size, **kwargs):
        seen.update(kwargs)
        return iter([])

    def n_fn(**kwargs):
        assert kwargs == {"foo": 42}
        return 45

    data_source.CallableDataSource(fn).batch_iterator(5, foo=42, bar=3.14)
    assert seen == {"foo": 42, "bar": 3.14}
    assert data_source.CallableDataSource(fn, n_fn).num_samples(foo=42) == 45
    assert data_source.CallableDataSource(fn, 42).num_samples() == 42
    assert data_source.CallableDataSource(fn, np.inf).num_samples() == np.inf
    with pytest.raises(TypeError):
        data_source.CallableDataSource(fn, "invalid")


def test_iterator_data_source():
    it = make_batch_iterator_callable(X, Y)(15)
    ds = data_source.IteratorDataSource(it)
    assert not ds.is_random_access and ds.num_samples() is None
    check(list(ds.batch_iterator(batch_size=3)), np.arange(45), 15)  # batch_size is ignored
    assert data_source.IteratorDataSource(it, 42).num_samples() == 42
    assert data_source.IteratorDataSource(it, np.inf).num_samples() == np.inf
    with pytest.raises(TypeError):
        data_source.IteratorDataSource(it, "invalid")


# -- Composite ---------------------------------------------------------------------------------

def test_composite_data_source_semi_supervised():
    lab_X, lab_y = np.arange(10 * 3).reshape(10, 3), np.arange(10)
    unlab_X = np.arange(33 * 3).reshape(33, 3) + 1000
    lab = data_source.ArrayDataSource([lab_X, lab_y], repeats=-1)
    unlab = data_source.ArrayDataSource([unlab_X])
    semi = data_source.CompositeDataSource([lab, unlab])
    assert semi.num_samples() == 33
    batches = list(semi.batch_iterator(batch_size=5))
    assert len(batches) == 7
    assert [len(b) for b in batches] == [3] * 7
    assert batches[-1][0].shape == (3, 3)  # trimmed to the short unlabelled batch
    np.testing.assert_array_equal(batches[2][0], lab_X[[0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(batches[6][2], unlab_X[30:])
    nested = data_source.CompositeDataSource([lab, unlab], flatten=False)
    b = next(nested.batch_iterator(batch_size=5))
    assert len(b) == 2 and len(b[0]) == 2 and len(b[1]) == 1
    untrimmed = list(data_source.CompositeDataSource([lab, unlab], trim=False).batch_iterator(5))
    assert untrimmed[-1][0].shape == (5, 3) and untrimmed[-1][2].shape == (3, 3)


def test_composite_shuffled_and_random_access():
    a = data_source.ArrayDataSource([np.arange(20)])
    b = data_source.ArrayDataSource([np.arange(30) + 100], indices=np.arange(10, 30))
    comp = data_source.CompositeDataSource([a, b])
    assert comp.is_random_access
    rng = np.random.RandomState(12345)
    batches = list(comp.batch_iterator(8, shuffle=rng))
    ref = np.random.RandomState(12345)
    pa, pb = ref.permutation(20), ref.permutation(20)  # each member draws its own permutation, lazily
    np.testing.assert_array_equal(np.concatenate([x[0] for x in batches]), pa)
    np.testing.assert_array_equal(np.concatenate([x[1] for x in batches]), 100 + np.arange(10, 30)[pb])
    ndx = next(comp.batch_indices_iterator(4))
    np.testing.assert_array_equal(ndx[1], [10, 11, 12, 13])
    out = comp.samples_by_indices([np.array([0, 1]), np.array([0, 1])])
    np.testing.assert_array_equal(out[1], [110, 111])
    out = comp.samples_by_indices_nomapping([np.array([0, 1]), np.array([0, 1])])
    np.testing.assert_array_equal(out[1], [100, 101])
    with pytest.raises(ValueError, match="length mis-match"):
        comp.samples_by_indices([np.arange(2)])
    cds = data_source.CompositeDataSource([a, data_source.CallableDataSource(make_batch_iterator_callable(X))])
    assert not cds.is_random_access
    assert cds.num_samples() is None  # an unknown member may be the shortest
    for method in (lambda: cds.samples_by_indices([0, 0]), lambda: cds.samples_by_indices_nomapping([0, 0]),
                   lambda: cds.batch_indices_iterator(5)):
        with pytest.raises(TypeError):
            method()


# -- Choice ------------------------------------------------------------------------------------

def _choice_members():
    a_X = np.arange(120).reshape((40, 3))
    b_X = np.arange(60).reshape((20, 3)) * 1000
    c_X = np.arange(30).reshape((10, 3)) * 100000
    d_X = np.arange(15).reshape((5, 3)) * 10000000
    return (a_X, b_X, c_X, d_X), [data_source.ArrayDataSource([x]) for x in (a_X, b_X, c_X, d_X)]


def test_choice_not_stratified_in_order():
    (a_X, b_X, c_X, d_X), members = _choice_members()
    ch = data_source.ChoiceDataSource(members)
    assert ch.is_random_access and ch.num_samples() == 75
    batches = list(ch.batch_iterator(5))
    assert len(batches) == 7  # round-robin until d_X (one batch) runs out
    for got, exp in zip(batches, [a_X[:5], b_X[:5], c_X[:5], d_X[:5], a_X[5:10], b_X[5:10], c_X[5:10]]):
        np.testing.assert_array_equal(got[0], exp)
    ndx = list(ch.batch_indices_iterator(5))
    assert [c.ds_index for c in ndx] == [0, 1, 2, 3, 0, 1, 2]


def test_choice_stratified_order():
    (a_X, b_X, c_X, d_X), members = _choice_members()
    assert data_source.ChoiceDataSource._ds_indices_stratified_in_order([8, 4, 2, 1]).tolist() == \
        [0, 1, 2, 3, 0, 0, 1, 0, 0, 1, 2, 0, 0, 1, 0]
    assert data_source.ChoiceDataSource._ds_indices_stratified_in_order([7, 3, 1]).tolist() == \
        [0, 1, 2, 0, 0, 0, 1, 0, 0, 1, 0]
    rng = np.random.RandomState(12345)
    for _ in range(32):
        nb = rng.randint(1, 16, size=(6,))
        np.testing.assert_array_equal(np.bincount(data_source.ChoiceDataSource._ds_indices_stratified_in_order(nb)), nb)
        np.testing.assert_array_equal(
            np.bincount(data_source.ChoiceDataSource._ds_indices_stratified_shuffled(nb, rng)), nb)
    ch = data_source.ChoiceDataSource(members, stratified=True)
    batches = list(ch.batch_iterator(5))
    assert len(batches) == 15  # every batch of every member once
    np.testing.assert_array_equal(batches[5][0], a_X[10:15])
    np.testing.assert_array_equal(batches[10][0], c_X[5:10])


def test_choice_shuffled_rounds():
    members = [data_source.ArrayDataSource([np.full(n, k)]) for k, n in enumerate((40, 20, 10, 5))]
    ch = data_source.ChoiceDataSource(members)
    got = [int(b[0][0]) for b in ch.batch_iterator(5, shuffle=np.random.RandomState(3))]
    # Each round visits the members in a fresh order; it ends at d's second visit.
    assert got.count(3) == 1 and len(set(got[:4])) == 4
    again = [int(b[0][0]) for b in ch.batch_iterator(5, shuffle=np.random.RandomState(3))]
    assert got == again


def test_choice_samples_by_indices_and_errors():
    (a_X, b_X, c_X, d_X), members = _choice_members()
    members[0] = data_source.ArrayDataSource([a_X], indices=np.arange(40)[::-1])
    ch = data_source.ChoiceDataSource(members)
    np.testing.assert_array_equal(ch.samples_by_indices_nomapping(data_source.ChoiceBatch(np.arange(5), 1))[0], b_X[:5])
    np.testing.assert_array_equal(ch.samples_by_indices(data_source.ChoiceBatch(np.arange(2), 0))[0], a_X[[39, 38]])
    for bad in (np.arange(5), [np.arange(5), 0], (np.arange(5), 0)):
        with pytest.raises(TypeError):
            ch.samples_by_indices(bad)
        with pytest.raises(TypeError):
            ch.samples_by_indices_nomapping(bad)
    call = data_source.ChoiceDataSource([data_source.CallableDataSource(make_batch_iterator_callable(X)), members[1]])
    assert not call.is_random_access
    with pytest.raises(TypeError):
        call.batch_indices_iterator(batch_size=5, shuffle=True)
    assert list(data_source.ChoiceDataSource([]).batch_iterator(5)) == []  # no members: no batches, no hang


def test_choice_inside_composite():
    (a_X, b_X, c_X, d_X), members = _choice_members()
    e_X = np.arange(105).reshape((35, 3)) * 7
    comp = data_source.CompositeDataSource([data_source.ChoiceDataSource(members), data_source.ArrayDataSource([e_X])])
    batches = list(comp.batch_iterator(5))
    assert len(batches) == 7
    np.testing.assert_array_equal(batches[3][0], d_X[:5])
    np.testing.assert_array_equal(batches[3][1], e_X[15:20])
    ndx = list(comp.batch_indices_iterator(5))
    assert ndx[4][0].ds_index == 0 and ndx[4][1].tolist() == list(range(20, 25))


# -- Map and batch_map -------------------------------------------------------------------------

def test_map_data_source():
    ds = data_source.ArrayDataSource([X, Y])

    def double(bx, by):
        return bx * 2, by

    m = ds.map(double)
    assert isinstance(m, data_source.MapDataSource) and m.is_random_access and m.num_samples() == 45
    for (mx, my), (bx, by) in zip(m.batch_iterator(10, shuffle=np.random.RandomState(0)),
                                  ds.batch_iterator(10, shuffle=np.random.RandomState(0))):
        np.testing.assert_array_equal(mx, bx * 2)
        np.testing.assert_array_equal(my, by)
    np.testing.assert_array_equal(m.samples_by_indices(np.array([3]))[0], [6])
    np.testing.assert_array_equal(next(m.batch_indices_iterator(4)), np.arange(4))
    mc = data_source.CallableDataSource(make_batch_iterator_callable(X)).map(lambda x: (x + 1,))
    assert not mc.is_random_access
    assert next(mc.batch_iterator(3))[0].tolist() == [1, 2, 3]
    with pytest.raises(TypeError):
        mc.samples_by_indices(np.arange(2))


def sqr_sum(x):
    return (x ** 2).sum(axis=1)


def test_batch_map_concat():
    Xf = np.random.RandomState(0).normal(size=(7, 10))
    ds = data_source.ArrayDataSource([Xf])
    (res,) = data_source.batch_map_concat(sqr_sum, ds.batch_iterator(batch_size=5))
    np.testing.assert_allclose(res, (Xf ** 2).sum(axis=1))
    (res,) = ds.batch_map_concat(sqr_sum, batch_size=5)
    np.testing.assert_allclose(res, (Xf ** 2).sum(axis=1))
    # n_batches: stop early and resume from the same iterator
    big = np.random.RandomState(1).normal(size=(100, 10))
    it = data_source.ArrayDataSource([big]).batch_iterator(batch_size=5)
    for i in range(10):
        (part,) = data_source.batch_map_concat(sqr_sum, it, n_batches=2)
        np.testing.assert_allclose(part, (big[i * 10:i * 10 + 10] ** 2).sum(axis=1))
    # prepend_args, tuples of results, None results
    out = ds.batch_map_concat(lambda k, x: (x[:, 0] * k, x[:, 1]), batch_size=3, prepend_args=(10.0,))
    np.testing.assert_allclose(out[0], Xf[:, 0] * 10)
    np.testing.assert_allclose(out[1], Xf[:, 1])
    assert ds.batch_map_concat(lambda x: None, batch_size=3) is None
    with pytest.raises(TypeError, match="tuple of results"):
        ds.batch_map_concat(lambda x: [1], batch_size=3)
    with pytest.raises(ValueError, match="infinite"):
        data_source.ArrayDataSource([Xf], repeats=-1).batch_map_concat(sqr_sum, batch_size=3)
    (res,) = data_source.ArrayDataSource([Xf], repeats=-1).batch_map_concat(sqr_sum, batch_size=3, n_batches=4)
    assert len(res) == 12


def test_progress_iter_func_gets_total_and_leave_false():
    calls = []

    def progress(it, total=None, leave=True):
        calls.append((total, leave))
        return it

    ds = data_source.ArrayDataSource([np.ones((23, 2))])
    ds.batch_map_concat(lambda x: x.sum(axis=1), batch_size=5, progress_iter_func=progress)
    ds.batch_map_mean(lambda x: x.sum(), batch_size=4, progress_iter_func=progress)
    assert calls == [(5, False), (6, False)]
    import tqdm
    (res,) = ds.batch_map_concat(lambda x: x.sum(axis=1), batch_size=5, progress_iter_func=tqdm.tqdm)
    assert res.shape == (23,)


def bce(pred, target):
    return (-target * np.log(pred) - (1 - target) * np.log(1 - pred)).mean(axis=1)


def test_batch_map_mean():
    rng = np.random.RandomState(0)
    pred, tgt = rng.uniform(0.1, 0.9, size=(7, 10)), rng.uniform(0.1, 0.9, size=(7, 10))
    ds = data_source.ArrayDataSource([pred, tgt])
    expected = bce(pred, tgt).mean()
    (loss,) = data_source.batch_map_mean(lambda p, t: bce(p, t).sum(), ds.batch_iterator(batch_size=5))
    assert np.isclose(loss, expected)
    (loss,) = data_source.batch_map_mean(bce, ds.batch_iterator(batch_size=5), sum_axis=0)
    assert np.isclose(loss, expected)
    (loss,) = ds.batch_map_mean(lambda p, t: bce(p, t).sum(), batch_size=3)
    assert np.isclose(loss, expected)
    loss, n = ds.batch_map_mean(lambda w, p, t: (bce(p, t).sum() * w, np.float64(len(p))), batch_size=3,
                                prepend_args=(2.0,))
    assert np.isclose(loss, 2 * expected) and n == 1.0
    pl, tl = rng.uniform(0.1, 0.9, size=(100, 10)), rng.uniform(0.1, 0.9, size=(100, 10))
    it = data_source.ArrayDataSource([pl, tl]).batch_iterator(batch_size=5)
    for i in range(10):
        (part,) = data_source.batch_map_mean(lambda p, t: bce(p, t).sum(), it, n_batches=2)
        assert np.isclose(part, bce(pl[i * 10:i * 10 + 10], tl[i * 10:i * 10 + 10]).mean())
    # The function's own arrays are not modified by the accumulation.
    first = []

    def per_batch(p, t):
        r = np.array([bce(p, t).sum()])
        first.append(r)
        return r

    ds.batch_map_mean(per_batch, batch_size=3)
    assert np.isclose(first[0][0], bce(pred[:3], tgt[:3]).sum())
    assert ds.batch_map_mean(lambda p, t: None, batch_size=3) is None
    with pytest.raises(TypeError):
        ds.batch_map_mean(lambda p, t: "x", batch_size=3)


def test_coerce_data_source():
    ads = data_source.ArrayDataSource([X])
    assert data_source.coerce_data_source(ads) is ads
    c = data_source.coerce_data_source([X, Y])
    assert isinstance(c, data_source.ArrayDataSource) and c.num_samples() == 45
    assert isinstance(data_source.coerce_data_source((X,)), data_source.ArrayDataSource)
    assert isinstance(data_source.coerce_data_source(iter([(X,)])), data_source.IteratorDataSource)
    assert isinstance(data_source.coerce_data_source(make_batch_iterator_callable(X)), data_source.CallableDataSource)
    with pytest.raises(TypeError):
        data_source.coerce_data_source([X, 1])
    with pytest.raises(ValueError):
        data_source.coerce_data_source([])
    with pytest.raises(TypeError):
        data_source.coerce_data_source(1)
