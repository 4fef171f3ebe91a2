"""The command line (README's main job) end to end on tiny configurations."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "pixelfly", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


def test_demo_runs_end_to_end(tmp_path):
    png = tmp_path / "demo.png"
    p = run("demo", "--tiny", "--steps", "4", "--batch", "16", "--budget", "0.5", "--plot", str(png))
    assert p.returncode == 0, p.stderr
    assert "speedup" in p.stdout and "pixelfly" in p.stdout and "dense" in p.stdout
    # each method chose its learning rate by the same sweep on a validation split
    assert "learning rates: each method's best of" in p.stdout and "validation split" in p.stdout
    assert p.stdout.count(" -> ") == 2
    assert png.stat().st_size > 1000


def test_demo_gpt2_tiny(tmp_path):
    p = run("--model", "gpt2", "--tiny", "--steps", "3", "--batch", "4", "--budget", "0.5",
            "--plot", str(tmp_path / "g.png"))
    assert p.returncode == 0, p.stderr
    assert "test loss" in p.stdout


def test_demo_with_a_given_lr_skips_the_sweep(tmp_path):
    p = run("--tiny", "--steps", "2", "--batch", "8", "--lr", "1e-3", "--plot", "")
    assert p.returncode == 0, p.stderr
    assert "learning rate: given (--lr), no sweep" in p.stdout
    p = run("--tiny", "--tune-steps", "0")
    assert p.returncode == 2 and "--tune-steps must be >= 1" in p.stderr


def test_plan_and_layout_commands():
    p = run("plan", "--model", "gpt2-small", "--budget", "0.25")
    assert p.returncode == 0, p.stderr
    assert "ratio" in p.stdout and "mlp" in p.stdout
    p = run("plan", "--model", "mixer", "--budget", "0.3")
    assert p.returncode == 0, p.stderr
    p = run("layout", "--rows", "8", "--cols", "8", "--factors", "2")
    assert p.returncode == 0 and p.stdout.count("#") == 8 * 3


def test_bad_arguments_give_a_message_not_a_traceback():
    p = run("plan", "--model", "gpt2-small", "--budget", "1.5")
    assert p.returncode == 2 and "rho" in p.stderr.lower() or "budget" in p.stderr.lower()
    assert "Traceback" not in p.stderr
