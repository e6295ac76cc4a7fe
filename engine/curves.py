"""``OUT/curves.png``: training loss, learning rate per group, temperature and dev metrics against the optimizer
step, drawn from ``log.jsonl`` with matplotlib's object API (a ``Figure`` rendered by Agg: no display, no pyplot
state) and written atomically.

A resumed run logs the steps after its last checkpoint twice; the later record of a (kind, step) wins, so the
curves show the run as it finally went.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from foundations.io import atomic_write_bytes

logger = logging.getLogger(__name__)

CURVES_NAME = "curves.png"


def series(records: Sequence[dict[str, Any]], kind: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` in the records of ``kind``, one point per step (the last record wins)."""
    points: dict[int, float] = {}
    for r in records:
        value = r.get(key)
        if r.get("kind") == kind and isinstance(value, (int, float)) and not isinstance(value, bool):
            points[int(r["step"])] = float(value)
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def keys_of(records: Sequence[dict[str, Any]], kind: str) -> list[str]:
    keys: dict[str, None] = {}
    for r in records:
        if r.get("kind") == kind:
            keys.update({k: None for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return [k for k in keys if k not in ("step", "time", "epoch")]


def draw_curves(records: Sequence[dict[str, Any]], path: Path, select_metric: str | None = None,
                title: str = "") -> Path:
    """Draw the four panels into ``path`` (PNG, atomically)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state, Agg for PNG

    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2)
    (ax_loss, ax_lr), (ax_tau, ax_dev) = axes
    steps, loss = series(records, "train", "loss")
    ax_loss.plot(steps, loss, label="train loss", color="tab:blue")
    dev_steps, dev_loss = series(records, "dev", "loss")
    if dev_steps:
        ax_loss.plot(dev_steps, dev_loss, "o-", label="dev loss", color="tab:orange")
    ax_loss.set(title="loss", xlabel="step", ylabel="loss")
    styles = ("-", "--", ":", "-.")  # groups often share a learning rate: keep every line visible
    for n, key in enumerate(k for k in keys_of(records, "train") if k.startswith("lr_")):
        ax_lr.plot(*series(records, "train", key), styles[n % len(styles)], label=key[3:], linewidth=1.8)
    ax_lr.set(title="learning rate per group", xlabel="step", ylabel="lr")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    tau_steps, tau = series(records, "train", "temperature")
    if tau_steps:
        ax_tau.plot(tau_steps, tau, color="tab:red")
    else:
        ax_tau.text(0.5, 0.5, "no temperature logged", ha="center", va="center", transform=ax_tau.transAxes)
    ax_tau.set(title="temperature", xlabel="step", ylabel="tau")
    for key in [k for k in keys_of(records, "dev") if k != "loss"]:
        width = 2.5 if key == select_metric else 1.2
        ax_dev.plot(*series(records, "dev", key), "o-", label=key, linewidth=width, markersize=3)
    if not keys_of(records, "dev"):
        ax_dev.text(0.5, 0.5, "no dev evaluation yet", ha="center", va="center", transform=ax_dev.transAxes)
    ax_dev.set(title="dev metrics" + (f" (selection: {select_metric})" if select_metric else ""), xlabel="step")
    for ax in (ax_loss, ax_lr, ax_dev):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    atomic_write_bytes(path, buffer.getvalue())
    return path
