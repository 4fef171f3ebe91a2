"""The tables' plots (matplotlib imported here only): metric vs speedup, loss curves."""
from __future__ import annotations

__all__ = ["plot_metric_vs_speedup", "plot_curves"]


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_metric_vs_speedup(rows, path, title=""):
    """One point per row (error bar = spread over seeds), one colour per model."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == model]
        ax.errorbar([r["speedup"] for r in rs], [r["value"] for r in rs],
                    yerr=[r["spread"] for r in rs], fmt="o-", capsize=3, label=model)
        for r in rs:
            ax.annotate(r["method"], (r["speedup"], r["value"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel("training step speedup vs dense (same run)")
    ax.set_ylabel(rows[0]["metric"] if rows else "")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(curves: dict, path, title="", xlabel="step", ylabel="training loss"):
    """``curves``: label -> list of values."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, ys in curves.items():
        ax.plot(range(1, len(ys) + 1), ys, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
