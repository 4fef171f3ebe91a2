"""Throw random and extreme arguments at every function of ``pixelfly._C``.

Only ValueError, TypeError, OverflowError and MemoryError may come out (or a result);
never a crash, never another exception. The functions are discovered with ``dir(_C)``,
so whatever is added to the module later (e.g. the budget bindings) is covered too.
Each batch runs in a subprocess so a segfault is reported as a failure of that batch.
"""
import os
import subprocess
import sys
import textwrap

import pytest

from pixelfly import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUNCTIONS = sorted(n for n in dir(_C) if not n.startswith("_") and callable(getattr(_C, n)))

DRIVER = textwrap.dedent(r'''
    import math, random, resource, sys
    # A huge request must surface as MemoryError, not take the machine down.
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    import numpy as np
    from pixelfly import _C

    name, seed, n_calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    fn = getattr(_C, name)
    ALLOWED = (ValueError, TypeError, OverflowError, MemoryError)

    def arrays():
        r = np.random.default_rng(rng.randrange(1 << 30))
        lay = r.random((rng.randint(0, 9), rng.randint(0, 9))) < 0.5
        big = r.random((12, 16)) < 0.5
        rp = np.array([0, 1, 3, 3, 5], np.int64)
        return [
            lay, big[::2, ::3], big.T, np.asfortranarray(big), big[:, :0], np.zeros((0, 0), bool),
            np.ones((4, 4), bool), np.ones((4, 4)), np.ones((4, 4), np.int32), np.ones(4, bool),
            np.ones((2, 2, 2), bool), np.array(True), np.array([], float), np.array([], np.int64),
            rp, rp[::-1], rp.astype(np.uint64), np.array([0, 2**62, -2**62]), np.array([2**64 - 1], np.uint64),
            np.arange(10)[::2], np.array([1.5, 2.5]), np.array(["a", "b"]), np.array([None, 1], object),
            [[True, False], [False, True]], [[1, 2], [3]], [0, 1, 2], [], (), "abc", b"xy",
            np.ones((3, 5), bool)[:, 1:4], np.broadcast_to(np.ones(4, bool), (5, 4)),
        ]

    INTS = [0, 1, 2, 3, 4, 5, 7, 8, 16, 32, -1, -2, -(2**20), 2**20 + 1, 2**21, 2**30, 2**30 + 1,
            2**31, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64, 2**100, -(2**63), -(2**64)]
    OTHERS = [None, 0.0, 0.5, 1.0, -0.5, 1.5, 2.0, float("nan"), float("inf"), -float("inf"), 1e300,
              True, False, "8", "", object(), {}, {"a": 1}, [1, 2], (8, 8), (1.0, 2.0), 3 + 4j,
              np.int64(8), np.float32(0.25), np.uint64(2**64 - 1), np.bool_(True)]

    def value():
        u = rng.random()
        if u < 0.45:
            return rng.randint(0, 12)          # plausible sizes reach the C validation
        if u < 0.65:
            return rng.choice(INTS)
        if u < 0.85:
            return rng.choice(OTHERS)
        if u < 0.9:
            return [(rng.randint(-2, 300), rng.randint(-2, 300), rng.randint(-2, 50))
                    for _ in range(rng.randint(0, 3))]
        return rng.choice(arrays())

    bad = []
    for call in range(n_calls):
        args = [value() for _ in range(rng.randint(0, 7))]
        kwargs = {}
        if rng.random() < 0.15:
            kwargs[rng.choice(["seed", "butterfly_size", "rows", "b1", "bogus", "density", "window"])] = value()
        try:
            fn(*args, **kwargs)
        except ALLOWED:
            pass
        except BaseException as e:  # noqa: BLE001 - that is the point
            bad.append(f"{name}(*{args!r:.300}, **{kwargs!r:.100}) raised {type(e).__name__}: {e}")
    for b in bad[:10]:
        print(b)
    sys.exit(1 if bad else 0)
''')


def run_batch(name, seed, n_calls=300):
    proc = subprocess.run([sys.executable, "-c", DRIVER, name, str(seed), str(n_calls)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"{name} seed={seed}: exit code {proc.returncode} "
        f"({'killed by signal ' + str(-proc.returncode) if proc.returncode < 0 else 'bad exception'})\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def test_functions_discovered():
    for must in ["flat_butterfly_layout", "factor_layout", "butterfly_product_layout", "local_layout",
                 "bigbird_layout", "sparse_transformer_layout", "random_layout", "layout_to_mask",
                 "mask_to_layout", "layout_nnz", "layout_to_csr", "csr_transpose",
                 "default_butterfly_size"]:
        assert must in FUNCTIONS


@pytest.mark.parametrize("name", FUNCTIONS)
def test_fuzz_function(name):
    for seed in range(3):
        run_batch(name, seed)


def test_driver_detects_crash():
    """The harness itself must fail on a non-allowed exception (guards against a vacuous fuzz)."""
    code = DRIVER.replace("fn = getattr(_C, name)", "fn = lambda *a, **k: {}['missing']")
    proc = subprocess.run([sys.executable, "-c", code, "layout_nnz", "0", "5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "KeyError" in proc.stdout


TARGETED = textwrap.dedent(r'''
    import numpy as np
    from pixelfly import _C
    ALLOWED = (ValueError, TypeError, OverflowError, MemoryError)
    big = np.ones((64, 64), bool)
    calls = []
    for v in [-1, 0, 1, 2**20, 2**20 + 1, 2**30, 2**31, 2**62, 2**63 - 1, -(2**63)]:
        calls += [
            lambda v=v: _C.flat_butterfly_layout(v, v, 1, 0), lambda v=v: _C.flat_butterfly_layout(8, v, 1),
            lambda v=v: _C.flat_butterfly_layout(8, 8, v, 8), lambda v=v: _C.flat_butterfly_layout(8, 8, 1, v),
            lambda v=v: _C.butterfly_product_layout(v, 8, 1, v), lambda v=v: _C.factor_layout(v, 2),
            lambda v=v: _C.factor_layout(8, v), lambda v=v: _C.local_layout(v, 4, 1),
            lambda v=v: _C.local_layout(4, 4, v), lambda v=v: _C.bigbird_layout(8, 8, v, 1, 1, 0),
            lambda v=v: _C.bigbird_layout(8, 8, 1, v, 1, 0), lambda v=v: _C.bigbird_layout(8, 8, 1, 1, v, 0),
            lambda v=v: _C.bigbird_layout(v, 8, 1, 1, 1, v), lambda v=v: _C.sparse_transformer_layout(8, v, 2),
            lambda v=v: _C.sparse_transformer_layout(8, 8, v), lambda v=v: _C.random_layout(v, 8, 0.5, 0),
            lambda v=v: _C.random_layout(8, 8, 0.5, v), lambda v=v: _C.layout_to_mask(big, v, 1),
            lambda v=v: _C.layout_to_mask(big, v, v), lambda v=v: _C.mask_to_layout(big, v, 2),
            lambda v=v: _C.mask_to_layout(big, 2, v), lambda v=v: _C.csr_transpose(v, 4, [0, 1, 2], [0, 1]),
            lambda v=v: _C.csr_transpose(2, v, [0, 1, 2], [0, 1]),
            lambda v=v: _C.csr_transpose(2, 4, [0, v, 2], [0, 1]),
            lambda v=v: _C.csr_transpose(2, 4, [0, 1, v], [0, 1]),
            lambda v=v: _C.csr_transpose(2, 4, [0, 1, 2], [v, 1]),
            lambda v=v: _C.default_butterfly_size(v, v),
        ]
    n_ok = n_err = 0
    for c in calls:
        try:
            c(); n_ok += 1
        except ALLOWED:
            n_err += 1
    print(n_ok, n_err)
''')


def test_targeted_extremes():
    proc = subprocess.run([sys.executable, "-c", TARGETED], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    n_ok, n_err = map(int, proc.stdout.split())
    assert n_ok > 0 and n_err > 100  # both paths exercised
