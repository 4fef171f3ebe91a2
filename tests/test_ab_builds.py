"""benchmarks/ab_builds.py: the before / after driver, on this checkout against itself."""
import json
import os
import statistics

import pytest

from benchmarks import ab_builds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--shapes", "128x256", "--densities", "0.25", "--rows", "64", "--reps", "1", "--rounds", "1"]


def test_same_checkout_both_sides(tmp_path, capsys):
    out = tmp_path / "ab.json"
    ab_builds.main(["--before", ROOT, *SMALL, "--json", str(out), "--plot", str(tmp_path / "ab.png")])
    doc = json.loads(out.read_text())
    cells = doc["table"]
    assert list(cells) == ["128x256 1/4"]
    cols = cells["128x256 1/4"]
    assert set(cols) == {f"{op} {dt}" for op in ab_builds.KERNELS for dt in ("fp32", "bf16")} | {
        "layer fp32", "layer bf16 autocast"}
    for v in cols.values():
        assert v["before"] > 0 and v["after"] > 0
        assert v["ratio"] == pytest.approx(v["after"] / v["before"])
        assert v["after_of_peak"] == pytest.approx(v["after"] / statistics.median(doc["peak_fp32"]))
    assert len(doc["runs"]["before"]) == len(doc["runs"]["after"]) == 1
    assert os.path.getsize(tmp_path / "ab.png") > 0
    assert "128x256 1/4:" in capsys.readouterr().out


def test_a_checkout_without_pixelfly_is_named(tmp_path):
    with pytest.raises(SystemExit, match=str(tmp_path)):
        ab_builds.main(["--before", str(tmp_path), *SMALL])


@pytest.mark.parametrize("bad", ["128", "128x", "axb"])
def test_bad_shape_is_refused(bad):
    with pytest.raises(SystemExit):
        ab_builds.main(["--before", ROOT, "--shapes", bad])
