"""The LRA table in the seed's layout (a row per attention, a column per task, the average)
appended to ``results/lra.md``, and the average accuracy-speed plane (``lra_average.png``)."""
from __future__ import annotations

import os

__all__ = ["pivot_markdown", "write_report"]


def pivot_markdown(rows, summary: dict, mem: dict) -> str:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cell = {(r["method"], r["task"]): r for r in rows}
    head = ["Attention"] + [f"{t} (L={cell[(rows[0]['method'], t)]['seq_len']})" for t in tasks] + ["Avg"]
    lines = ["Test accuracy (mean ± sd over seeds):", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for method, s in summary.items():
        accs = [f"{100 * cell[(method, t)]['value']:.2f} ± {100 * cell[(method, t)]['spread']:.1f}" for t in tasks]
        lines.append(f"| {method} | " + " | ".join(accs) + f" | {100 * s['average_accuracy']:.2f} |")
    lines += ["", "Training-step speedup vs the Transformer (same run) / peak MiB of one step:", "",
              "| " + " | ".join(["Attention"] + tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
    for method in summary:
        vals = []
        for t in tasks:
            m = mem.get(f"{t}/{method}")
            vals.append(f"{cell[(method, t)]['speedup']:.2f}x / " + ("-" if m is None else f"{m:.0f}"))
        lines.append(f"| {method} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def plot_average(summary: dict, path: str):
    from .plots import _plt
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for method, s in summary.items():
        ax.scatter([s["speedup_longest"]], [100 * s["average_accuracy"]])
        ax.annotate(method, (s["speedup_longest"], 100 * s["average_accuracy"]), fontsize=8,
                    xytext=(3, 3), textcoords="offset points")
    L = next(iter(summary.values()))["longest_len"]
    ax.set_xlabel(f"training-step speedup vs Transformer at L={L}")
    ax.set_ylabel("average test accuracy (%)")
    ax.set_title("LRA at CPU scale: accuracy vs speed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows, summary: dict, mem: dict, out_dir: str) -> str:
    """Append the pivot table to ``<out_dir>/lra.md``, draw ``lra_average.png``; returns the table."""
    table = pivot_markdown(rows, summary, mem)
    with open(os.path.join(out_dir, "lra.md"), "a") as f:
        f.write("\n" + table)
    plot_average(summary, os.path.join(out_dir, "lra_average.png"))
    return table
