"""What of the GPU check (make gpu-check, benchmarks/gpu_check.sh) runs without a GPU: the
script's shell syntax, its behaviour on a machine without a GPU (summary written, exit 2),
and the benchmark script end to end on the CPU kernels (its --device cpu smoke mode)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")


def has_gpu():
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def test_script_syntax():
    subprocess.run(["bash", "-n", SCRIPT], check=True)


@pytest.mark.skipif(has_gpu(), reason="a GPU is present: make gpu-check runs for real here")
def test_without_a_gpu_it_says_so(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    r = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no NVIDIA GPU here" in r.stdout
    summary = json.loads((tmp_path / "gpu_check_summary.json").read_text())
    assert summary["passed"] is False and summary["gpu"] == "none"
    assert summary["steps"] == [{"step": "machine", "status": "no-gpu", "seconds": "0"}]
    assert "no NVIDIA GPU here" in (tmp_path / "gpu_check.log").read_text()


def test_benchmark_script_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-W", "ignore", "-m", "benchmarks.bench_cuda", "--device", "cpu",
           "--shapes", "256x1024", "--T", "40", "--densities", "1/4", "--dtype", "fp32",
           "--warmup", "1", "--iters", "1", "--json", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["wrong"] == [] and res["impls"] == ["native", "composite"]
    phases = {(row["impl"], row["phase"]) for row in res["rows"]}
    assert phases == {(i, p) for i in ("native", "composite")
                      for p in ("fwd", "bwd_x", "bwd_w", "bwd", "fwd+bwd")}
    assert all(row["sparse_ms"] > 0 and row["dense_ms"] > 0 for row in res["rows"])
