"""The peak probe (csrc/cpu/peak.c through pixelfly._C) and the benchmarks that report
fractions of it (run at --quick sizes: the pipeline and its checks, not the speed)."""
import json
import math

import pytest
import torch

from pixelfly import _C, ops

ISAS = [i for i in (1, 2, 3, 4) if i <= int(ops.cpu_isa())]
LANES = {1: 1, 2: 8, 3: 16, 4: 16}   # 4 (AVX-512 + AVX512_BF16): the fp32 FMA of AVX-512


@pytest.mark.parametrize("isa", ISAS)
def test_peak_fma_counts_its_flops(isa):
    flops, sink = _C.peak_fma(isa, 1000)
    assert flops == 1000 * 12 * LANES[isa] * 2
    assert math.isfinite(sink) and sink > 0          # the chains converge, no overflow
    assert _C.peak_fma(isa, 0)[0] == 0


def test_peak_fma_auto_is_the_best_isa():
    assert _C.peak_fma(0, 10)[0] == 10 * 12 * LANES[int(ops.cpu_isa())] * 2


@pytest.mark.skipif(int(ops.cpu_isa()) == 4, reason="this CPU runs every ISA")
def test_peak_fma_refuses_an_isa_the_cpu_lacks():
    with pytest.raises(ValueError, match="isa"):
        _C.peak_fma(4, 10)


@pytest.mark.parametrize("bad", [-1, 5])
def test_peak_fma_bad_arguments(bad):
    with pytest.raises(ValueError, match="isa"):
        _C.peak_fma(bad, 10)
    with pytest.raises(ValueError):
        _C.peak_fma(1, -5)
    with pytest.raises(TypeError):
        _C.peak_fma("1", 10)


TILE = {1: 8 * 16, 2: 6 * 16, 3: 8 * 32, 4: 8 * 32}  # register tile per ISA (portable: 8 x 16)


@pytest.mark.parametrize("isa", ISAS)
def test_peak_tile_counts_its_flops(isa):
    flops, sink = _C.peak_tile(isa, 3)
    assert flops == 3 * TILE[isa] * 64 * 2               # 64 steps a round
    assert sink == 3 * TILE[isa] * 64 * 2.0 ** -20       # each multiply-add adds 2^-10 * 2^-10
    assert _C.peak_tile(isa, 0)[0] == 0
    assert _C.peak_tile(0, 1)[0] == TILE[int(ops.cpu_isa())] * 64 * 2


@pytest.mark.parametrize("bad", [-1, 5])
def test_peak_tile_bad_arguments(bad):
    with pytest.raises(ValueError, match="isa"):
        _C.peak_tile(bad, 10)
    with pytest.raises(ValueError):
        _C.peak_tile(1, -5)
    with pytest.raises(TypeError):
        _C.peak_tile(1, "10")
    if int(ops.cpu_isa()) < 4:
        with pytest.raises(ValueError, match="isa"):
            _C.peak_tile(4, 10)


def test_peak_dpbf16_follows_the_cpu():
    if _C.has_avx512_bf16():
        flops, sink = _C.peak_dpbf16(100)
        assert flops == 100 * 12 * 32 * 2 and math.isfinite(sink)
    else:
        with pytest.raises(ValueError, match="AVX512_BF16"):
            _C.peak_dpbf16(100)


def test_measure_reports_every_isa():
    from benchmarks.peak import describe, measure
    p = measure(threads=1, seconds=0.01)
    assert set(p["fp32_gflops"]) == {("portable", "avx2", "avx512")[i - 1] for i in ISAS if i <= 3}
    assert all(v > 0 for v in p["fp32_gflops"].values()) and p["fp32_best"] > 0
    assert (p["bf16_gflops"] is None) != bool(_C.has_avx512_bf16())
    assert set(p["tile_gflops"]) == set(p["fp32_gflops"]) and p["tile_best"] > 0
    assert "fp32 FMA" in describe(p) and "fp32 tile" in describe(p)


def test_bench_linear_quick_reports_fractions_of_peak(tmp_path):
    from benchmarks import bench_linear
    out = tmp_path / "linear.json"
    threads = torch.get_num_threads()
    try:
        bench_linear.main(["--quick", "--reps", "1", "--threads", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    doc = json.loads(out.read_text())
    assert doc["meta"]["peak"]["fp32_best"] > 0
    for row in doc["results"]:
        for key in ("kernels", "kernels_bf16"):
            assert set(row[key]) == {"fwd", "bwd_x", "bwd_w"}
            assert all(k["fraction_of_peak"] > 0 for k in row[key].values())
        # the fp32 kernels (and bf16 ones that widen to fp32) against the tile probe
        assert all(k["fraction_of_tile"] > 0 for k in row["kernels"].values())
        native_bf16 = doc["meta"]["peak"]["bf16_gflops"] is not None
        assert all((k["fraction_of_tile"] is None) == native_bf16 for k in row["kernels_bf16"].values())


def test_bench_linear_small_only_reports_the_few_row_rows(tmp_path):
    from benchmarks import bench_linear
    out = tmp_path / "small.json"
    threads = torch.get_num_threads()
    try:
        bench_linear.main(["--quick", "--small-only", "--reps", "1", "--threads", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    doc = json.loads(out.read_text())
    assert doc["results"] == [] and len(doc["small_t"]) == 1
    row = doc["small_t"][0]
    assert all(row[k][ph] > 0 for k in ("pixelfly_us", "dense_us") for ph in ("fwd", "fwdbwd"))


def test_bench_attention_quick_reports_fractions_of_peak(tmp_path):
    from benchmarks import bench_attention
    out = tmp_path / "attention.json"
    threads = torch.get_num_threads()
    try:
        assert bench_attention.main(["--lengths", "256", "--reps", "1", "--threads", "1", "--no-memory",
                                     "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    doc = json.loads(out.read_text())
    assert doc["meta"]["peak"]["fp32_best"] > 0
    assert {r["method"] for r in doc["results"]} == set(bench_attention.METHODS)
    assert all(r["fraction_of_peak"] > 0 for r in doc["results"])
    assert all(r["fb_s_bf16"] > 0 and r["speedup_vs_dense_bf16"] > 0 for r in doc["results"])
