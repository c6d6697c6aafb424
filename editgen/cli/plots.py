"""The attention figure of `editgen edit`: per target token, cross-attention over time
for the source and the edited audio, side by side (matplotlib, Agg, imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def matplotlib_available() -> bool:
    """matplotlib comes with the `cli` extra; without it `editgen edit` skips the figure."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def attention_panels(mean_maps: np.ndarray, plan, target_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Source and edited maps over the target's real tokens, each float32 [length, steps].

    mean_maps: [steps, 1 + targets, T] (row 0 source, row 1 + i target i), averaged over
    layers and heads. The source map is projected onto the target's tokens through the
    plan's mapper ([source token, target token]), so both panels share a y axis; target
    tokens with no source counterpart (words a refine adds) are 0 in the source panel.
    """
    length = plan.target.length
    source = mean_maps[:, 0, :] @ plan.mapper  # [steps, T] @ [T, T] -> [steps, T]
    edited = mean_maps[:, 1 + target_index, :]  # [steps, T]
    return (np.ascontiguousarray(source[:, :length].T, dtype=np.float32),
            np.ascontiguousarray(edited[:, :length].T, dtype=np.float32))


def plot_edit_attention(path: str | Path, mean_maps: np.ndarray, plans: Sequence, *,
                        frame_rate: int, audio_seconds: float | None = None,
                        title: str | None = None) -> None:
    """Writes a PNG: one row per target, columns source (mapped) | edited.

    Decoder step s produces codebook 0 of frame s, so the x axis is step / frame_rate in
    seconds (the last K - 1 steps run past the audio's end, finishing the delayed codebooks;
    `audio_seconds`, when given, is marked with a dashed line).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = mean_maps.shape[0]
    seconds = steps / frame_rate
    rows = len(plans)
    max_len = max(p.target.length for p in plans)
    height = max(2.6, 0.28 * max_len + 1.6)
    fig = Figure(figsize=(12, height * rows + (0.6 if title else 0)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # Agg without pyplot: no global backend state, no display needed
    axes = fig.subplots(rows, 2, squeeze=False, sharex=True)
    for i, plan in enumerate(plans):
        source, edited = attention_panels(mean_maps, plan, i)
        lo, hi = float(min(source.min(), edited.min())), float(max(source.max(), edited.max(), 1e-6))
        if lo < 0:  # a negative reweight: diverging colors centred on 0
            cmap, vmax = "coolwarm", max(hi, -lo)
            vmin = -vmax
        else:
            cmap, vmin, vmax = "magma", 0.0, hi
        labels = [_label(p) for p in plan.target.pieces]
        panels = ((source, f"source: {plan.source.text!r}\n(mapped onto target tokens, op {plan.op}; 0 = no source token)"),
                  (edited, f"edited: {plan.target.text!r}"))
        for ax, (image, name) in zip(axes[i], panels):
            im = ax.imshow(image, aspect="auto", origin="upper", interpolation="nearest", cmap=cmap,
                           vmin=vmin, vmax=vmax, extent=(0.0, seconds, len(labels) - 0.5, -0.5))
            if audio_seconds is not None and audio_seconds < seconds:
                ax.axvline(audio_seconds, color="white", linestyle="--", linewidth=0.8)
            ax.set_yticks(range(len(labels)), labels, fontsize=9)
            ax.set_title(name, fontsize=10)
            ax.set_ylabel("target token")
            if i == rows - 1:
                end = "; dashed: end of audio" if audio_seconds is not None and audio_seconds < seconds else ""
                ax.set_xlabel(f"time (s) = decoder step / {frame_rate} frames per s{end}")
        fig.colorbar(im, ax=axes[i].tolist(), label="attention (mean of layers, heads)", shrink=0.9)
    fig.suptitle(title or "Cross-attention per target token over time", fontsize=12)
    fig.savefig(str(path), format="png")


def _label(piece: str) -> str:
    """`▁guitar` -> `guitar`; a word-continuation piece is shown as `·piece`."""
    if piece.startswith("▁"):
        return piece[1:] or "▁"
    if piece.startswith("<") and piece.endswith(">"):
        return piece
    return "·" + piece
