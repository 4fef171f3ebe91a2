"""Table rows -> ``results/<table>.json`` + markdown + PNG.

A row: ``task, model, method, metric, value, spread, seeds, speedup, params, flops`` (+ the
chosen ``lr``); ``value`` is the mean over seeds, ``spread`` their standard deviation,
``speedup`` the dense step time over this method's, measured in the same run.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time

__all__ = ["ROW_KEYS", "aggregate", "markdown", "write_table", "machine_info", "finish"]

ROW_KEYS = ("task", "model", "method", "metric", "value", "speedup", "params", "flops")


def machine_info() -> dict:
    import torch
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "loadavg_1_5_15": [round(x, 2) for x in load], "utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def aggregate(runs) -> list[dict]:
    """Runs (one dict per seed, with the row keys and a scalar ``value``) -> one row per
    ``(task, model, method, metric)``, mean and spread over seeds, in first-seen order."""
    groups = {}
    for r in runs:
        groups.setdefault((r["task"], r["model"], r["method"], r["metric"]), []).append(r)
    rows = []
    for (task, model, method, metric), rs in groups.items():
        vals = [r["value"] for r in rs]
        speeds = [r["speedup"] for r in rs if r["speedup"] is not None]
        rows.append({"task": task, "model": model, "method": method, "metric": metric,
                     "value": statistics.fmean(vals),
                     "spread": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                     "seeds": len(vals), "speedup": statistics.fmean(speeds) if speeds else None,
                     "params": rs[0]["params"], "flops": rs[0]["flops"],
                     **{k: rs[0][k] for k in ("lr", "seq_len", "peak_mib") if k in rs[0]}})
    return rows


def _speed(s):
    return "-" if s is None else f"{s:.2f}x"


def markdown(rows) -> str:
    """The seed's "Model | metric | Speedup | Params | FLOPs" layout."""
    lines = ["| Model | Method | Metric | Value (mean ± sd, seeds) | Speedup | Params | GFLOPs (fwd) | lr |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['method']} | {r['metric']} | {r['value']:.4g} ± {r['spread']:.2g} "
                     f"({r['seeds']}) | {_speed(r['speedup'])} | {r['params'] / 1e6:.3f}M | "
                     f"{r['flops'] / 1e9:.3g} | {r.get('lr', '')} |")
    return "\n".join(lines) + "\n"


def write_table(table: str, rows, out_dir: str = "results", **extra) -> dict:
    """Write ``<out_dir>/<table>.json`` (``rows`` + ``machine`` + ``extra``) and
    ``<out_dir>/<table>.md``; returns the paths."""
    for r in rows:
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            raise ValueError(f"row {r} lacks {missing}")
    os.makedirs(out_dir, exist_ok=True)
    doc = {"table": table, "rows": list(rows), "machine": machine_info(), **extra}
    paths = {"json": os.path.join(out_dir, f"{table}.json"), "md": os.path.join(out_dir, f"{table}.md")}
    with open(paths["json"], "w") as f:
        json.dump(doc, f, indent=1)
    with open(paths["md"], "w") as f:
        f.write(f"# {table}\n\n{markdown(rows)}\n")
        for k, v in extra.items():
            if isinstance(v, (str, int, float)):
                f.write(f"- {k}: {v}\n")
        f.write(f"- machine: {doc['machine']}\n")
    return paths


def finish(table: str, runs, out_dir: str, curves: dict, titles: tuple[str, str], **extra):
    """The end of every table: aggregate the runs (one per seed), add each (model, method)'s
    median step time (``step_time_ms``) and the loss ``curves`` to ``extra``, write the
    table (:func:`write_table`) and its two plots (``titles``: metric vs speedup, curves).
    Returns ``(rows, extra)``."""
    from . import plots
    rows = aggregate(runs)
    step_ms = {f"{r['model']}/{r['method']}": round(1e3 * statistics.median(
        x["step_time"] for x in runs if (x["model"], x["method"]) == (r["model"], r["method"])), 2) for r in rows}
    extra = dict(extra, step_time_ms=step_ms, curves=curves)
    write_table(table, rows, out_dir, **extra)
    plots.plot_metric_vs_speedup(rows, f"{out_dir}/{table}.png", titles[0])
    plots.plot_curves(curves, f"{out_dir}/{table}_curves.png", titles[1])
    return rows, extra
