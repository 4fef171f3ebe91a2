"""The README is executable truth: every ```python block runs as written, every docstring
example runs (doctest), and the documented API is what the names say it is."""
import doctest
import importlib
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "README.md")) as f:
    README = f.read()
BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)


def run(code, cwd, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("k", range(len(BLOCKS)))
def test_readme_block_runs_as_written(k, tmp_path):
    proc = run(BLOCKS[k], tmp_path)
    assert proc.returncode == 0, f"README python block {k}:\n{BLOCKS[k]}\n{proc.stdout}{proc.stderr}"


def _modules_with_examples():
    pkg = os.path.join(ROOT, "pixelfly")
    out = []
    for dirpath, _, files in os.walk(pkg):
        for fn in sorted(files):
            if fn.endswith(".py"):
                path = os.path.join(dirpath, fn)
                with open(path) as f:
                    if ">>> " in f.read():
                        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                        out.append(rel[:-9] if rel.endswith(".__init__") else rel)
    return out


def test_there_are_docstring_examples():
    assert len(_modules_with_examples()) >= 2


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples_run(name):
    res = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert res.attempted > 0 and res.failed == 0, res


def test_import_pixelfly_does_not_import_torch(tmp_path):
    code = ("import sys, pixelfly\n"
            "lay = pixelfly.flat_butterfly_layout(8, 16, n_factors=2)\n"
            "p = pixelfly.allocate_budget([(1024, 1024, 256)], budget=0.25)\n"
            "assert lay.shape == (8, 16) and p.layers[0].sparsified\n"
            "pixelfly.layer_cost(64, 64, 8); pixelfly.CostModel(); pixelfly.layout_to_csr(lay)\n"
            "assert 'torch' not in sys.modules, 'import pixelfly loaded torch'\n"
            "assert 'transformers' not in sys.modules\n")
    proc = run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_public_names_are_the_functions_however_reached(tmp_path):
    code = ("import inspect, pixelfly\n"
            "from pixelfly import sparsify, plan, densify, Plan, from_pretrained\n"
            "import pixelfly.convert, pixelfly.planfile, pixelfly.hf\n"
            "from pixelfly.convert import sparsify as s2\n"
            "for n in ('plan', 'sparsify', 'densify', 'from_pretrained'):\n"
            "    assert inspect.isfunction(getattr(pixelfly, n)), n\n"
            "assert inspect.isclass(pixelfly.Plan) and pixelfly.sparsify is sparsify is s2\n"
            "assert sparsify.__module__ == 'pixelfly.convert' and Plan.__module__ == 'pixelfly.planfile'\n"
            "import torch\n"
            "m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))\n"
            "p = pixelfly.plan(m, torch.randn(4, 64), budget=0.5, block_size=16)\n"
            "pixelfly.sparsify(m, p); pixelfly.densify(m)\n")
    proc = run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
