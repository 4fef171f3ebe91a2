"""FSDP2 (fully_shard) on 2 gloo processes on the CPU trains PixelflyLinear layers like one
process does, and torch.distributed.checkpoint saves and reloads the sharded state."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip("torch.distributed.fsdp", reason="torch without distributed support")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    script = os.path.join(os.path.dirname(__file__), "fsdp_worker.py")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path_factory.mktemp("fsdp") / "fsdp.pt"
    proc = subprocess.run([sys.executable, script, str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return torch.load(out)


def test_fsdp2_two_processes_match_single_process(results):
    assert set(results["sharded"].values()) == {"DTensor"}  # every parameter was sharded
    assert results["fsdp"].keys() == results["single"].keys()
    for name, w in results["single"].items():
        torch.testing.assert_close(results["fsdp"][name], w, rtol=1e-5, atol=1e-6, msg=name)


def test_distributed_checkpoint_round_trip(results):
    """Loaded into a differently initialised sharded model: the state equals the saved one,
    and one more step (momentum restored) gives the same model as the run that saved it;
    read without FSDP into a plain model, the same tensors again."""
    for name, w in results["fsdp"].items():
        assert torch.equal(results["loaded"][name], w), name
        assert torch.equal(results["plain"][name], w), name
    for name, w in results["resumed"].items():
        assert torch.equal(results["resumed_from_ckpt"][name], w), name
        if w.dtype.is_floating_point and name.endswith(("blocks", "U", "V")):
            assert not torch.equal(w, results["fsdp"][name]), f"{name} did not train"
