"""fly_config_layout (the authors' rule) against a NumPy re-derivation of the rule and
against flat_butterfly_layout where a butterfly cell spans whole blocks."""
import itertools
import math

import numpy as np
import pytest

import pixelfly
from pixelfly import fly_config_layout


def fly_oracle(out_f, in_f, n, m, b1, b2, global_size=0, shuffle=False):
    """Element pattern of the rule, any-pooled to b1 x b2 blocks (vectorised NumPy)."""
    p = np.arange(out_f) // (out_f // n)
    q = np.arange(in_f) // (in_f // n)
    if shuffle:
        groups = n >> m
        q = (q % groups) * (1 << m) + q // groups
    x = p[:, None] ^ q[None, :]
    keep = (x == 0) | (((x & (x - 1)) == 0) & (x < (1 << m)))
    keep[:global_size] = True
    keep[:, :global_size] = True
    return keep.reshape(out_f // b1, b1, in_f // b2, b2).any(axis=(1, 3))


def configs():
    feats = [32, 64, 96, 192, 768]
    for out_f, in_f in itertools.product(feats, feats):
        n = 2
        while n <= min(out_f, in_f, 64):
            if out_f % n == 0 and in_f % n == 0:
                for m in range(1, int(math.log2(n)) + 1):
                    yield out_f, in_f, n, m
            n *= 2


@pytest.mark.parametrize("block", [32, 16, (8, 32), (32, 1), 3])
def test_matches_the_rule(block):
    b1, b2 = (block, block) if isinstance(block, int) else block
    variants = [(0, True), (b1 + 3, False), (7, True), (10 ** 6, False)]
    checked = 0
    for k, (out_f, in_f, n, m) in enumerate(configs()):
        if out_f % b1 or in_f % b2:
            continue
        for g, shuffle in [(0, False), variants[k % len(variants)]]:
            got = fly_config_layout(out_f, in_f, n, m, block=block, global_size=g, shuffle=shuffle)
            assert got.dtype == np.bool_ and got.shape == (out_f // b1, in_f // b2)
            np.testing.assert_array_equal(got, fly_oracle(out_f, in_f, n, m, b1, b2, g, shuffle),
                                          err_msg=f"{out_f}x{in_f} n={n} m={m} block={block} g={g} shuffle={shuffle}")
            checked += 1
    assert checked > 100


def test_equals_flat_butterfly_when_cells_span_whole_blocks():
    checked = 0
    for R, C in itertools.product([2, 3, 4, 6, 8, 12, 16, 24, 32], repeat=2):
        n = 2
        while n <= min(R, C):
            if R % n == 0 and C % n == 0:
                for m in range(1, int(math.log2(n)) + 1):
                    np.testing.assert_array_equal(
                        fly_config_layout(R * 32, C * 32, n, m, block=32),
                        pixelfly.flat_butterfly_layout(R, C, m, n), err_msg=f"{R}x{C} n={n} m={m}")
                    checked += 1
            n *= 2
    assert checked > 200


def test_straddling_cells_are_denser_than_block_cells():
    # The release's GPT-2 MLP (768 x 3072, n = 16, m = 2, blocks of 32): a cell is 48 x 192
    # elements, so cells straddle block rows and the pooled layout holds more blocks than
    # the block-level rule's (m + 1) / n.
    fly = fly_config_layout(3072, 768, 16, 2, block=32)
    flat = pixelfly.flat_butterfly_layout(96, 24, 2, 16)
    assert (fly | flat).sum() == fly.sum() and fly.sum() > flat.sum()
    assert flat.mean() == pytest.approx(3 / 16)


def test_shuffle_is_identity_with_all_factors_and_a_permutation_otherwise():
    for n in (4, 8, 16):
        m = int(math.log2(n))
        np.testing.assert_array_equal(fly_config_layout(n * 32, n * 32, n, m, shuffle=True),
                                      fly_config_layout(n * 32, n * 32, n, m))
    # cells spanning blocks: shuffling permutes the block columns of the layout
    a, b = fly_config_layout(512, 512, 16, 2), fly_config_layout(512, 512, 16, 2, shuffle=True)
    assert not np.array_equal(a, b)
    assert sorted(map(tuple, a.T.astype(int))) == sorted(map(tuple, b.T.astype(int)))


def test_global_rows_and_columns():
    lay = fly_config_layout(256, 512, 8, 1, block=32, global_size=33)
    assert lay[:2].all() and lay[:, :2].all()
    base = fly_config_layout(256, 512, 8, 1, block=32)
    np.testing.assert_array_equal(lay[2:, 2:], base[2:, 2:])


@pytest.mark.parametrize("kwargs,name", [
    (dict(out_features=0), "out_features"),
    (dict(in_features=-64), "in_features"),
    (dict(out_features=48), "out_features"),     # not a multiple of the block
    (dict(in_features=80), "in_features"),
    (dict(butterfly_size=12), "butterfly_size"),
    (dict(butterfly_size=1), "butterfly_size"),
    (dict(butterfly_size=128), "butterfly_size"),  # does not divide 64
    (dict(n_factors=0), "n_factors"),
    (dict(n_factors=4), "n_factors"),
    (dict(block=0), "block"),
    (dict(block=(32, 0)), "block"),
    (dict(block=(32, 32, 32)), "block"),
    (dict(global_size=-1), "global_size"),
    (dict(out_features=2 ** 70), "out_features"),
])
def test_bad_values_name_the_argument(kwargs, name):
    args = dict(out_features=64, in_features=64, butterfly_size=8, n_factors=2, block=32)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        fly_config_layout(**args)


@pytest.mark.parametrize("kwargs,name", [
    (dict(out_features=64.0), "out_features"),
    (dict(butterfly_size=True), "butterfly_size"),
    (dict(n_factors="2"), "n_factors"),
    (dict(block=32.0), "block"),
    (dict(global_size=None), "global_size"),
    (dict(shuffle=1), "shuffle"),
])
def test_bad_types_name_the_argument(kwargs, name):
    args = dict(out_features=64, in_features=64, butterfly_size=8, n_factors=2)
    args.update(kwargs)
    with pytest.raises(TypeError, match=name):
        fly_config_layout(**args)
