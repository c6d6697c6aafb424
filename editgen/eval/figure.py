"""table.png of `editgen protocol`: the Table 1 layout as a table, and one bar chart per
metric (a bar per setting, its 95% CI as the error bar). matplotlib (Agg, no pyplot),
imported when called."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

# Fixed axes where the metric has fixed bounds, so two runs' figures compare by eye.
_LIMITS = {"melody_accuracy": (0.0, 1.0), "rhythm_f1": (0.0, 1.0), "dynamics_correlation": (-1.0, 1.0)}


def plot_methods(path: str | Path, groups: dict, labels: Sequence[str], columns: Sequence[tuple[str, str]],
                 cells: Sequence[Sequence[str]], *, title: str, warning: str | None = None) -> None:
    """groups: {label: {field: Summary | None}} (report.group_summaries); columns: (field,
    title) in table order; cells: [label][column] the texts of table.txt, so the two agree."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(columns)
    fig = Figure(figsize=(max(8.0, 2.9 * n), 3.4 + 0.32 * len(labels)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subfigures(2, 1, height_ratios=[0.9 + 0.3 * len(labels), 2.6])
    ax = top.subplots()
    ax.axis("off")
    table = ax.table(cellText=[list(row) for row in cells], rowLabels=list(labels),
                     colLabels=[t for _, t in columns], loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.3)
    colors = [f"C{i}" for i in range(len(labels))]
    for axis, (field, name) in zip(bottom.subplots(1, n, squeeze=False)[0], columns):
        for x, label in enumerate(labels):
            s = groups[label][field]
            if s is None:
                axis.text(x, 0.0, "n/a", ha="center", va="bottom", fontsize=8)
                continue
            err = None if math.isnan(s.ci95) else s.ci95
            axis.bar(x, s.mean, color=colors[x], yerr=err, capsize=4)
        axis.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        axis.set_title(name, fontsize=10)
        axis.axhline(0.0, color="black", linewidth=0.6)
        if field in _LIMITS:
            axis.set_ylim(*_LIMITS[field])
    top.suptitle(title, fontsize=11)
    if warning:
        bottom.suptitle(warning, fontsize=9, color="firebrick")
    fig.savefig(str(path), format="png")
