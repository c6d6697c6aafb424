"""results.json, the table (stdout / markdown) and the steps/s plot."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def label(run: dict) -> str:
    return f"{run['engine']} {run['workload']}"


def write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".results.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it 0600
    os.replace(tmp, path)


def step_rows(results: dict) -> list[list[str]]:
    rows = []
    for run in results["runs"]:
        for p in run.get("points", []):
            rows.append([run["engine"], run["workload"], str(p["frames"]), str(p["batch"]), str(p["rows"]),
                         f"{p['steps_s']:.2f}", f"{p['steps_s_median']:.2f}", f"{1e3 * p['step_s']['min']:.0f}",
                         f"{p['roofline_steps_s']:.2f}", f"{100 * p['roofline_fraction']:.0f}%",
                         f"{p['peak_rss_mb']:.0f}"])
    return rows


STEP_HEADER = ["engine", "workload", "frames", "batch", "rows", "steps/s (min)", "steps/s (median)",
               "ms/step", "roofline steps/s", "of roofline", "peak RSS MiB"]
E2E_HEADER = ["engine", "workload", "audio s", "wall s (min)", "RTF (audio s / s)", "steps/s e2e",
              "first audio s", "peak RSS MiB"]


def e2e_rows(results: dict) -> list[list[str]]:
    rows = []
    for run in results["runs"]:
        e = run.get("e2e")
        if e and "error" in e:
            rows.append([run["engine"], run["workload"], "failed: " + e["error"][:60]] + [""] * 5)
        elif e:
            rows.append([run["engine"], run["workload"], f"{e['audio_seconds']:.2f}", f"{e['wall_s']['min']:.2f}",
                         f"{e['rtf']:.3f}", f"{e['steps_s']:.2f}",
                         f"{e['ttff_s']['min']:.3f}" if "ttff_s" in e else "failed",
                         f"{e['peak_rss_mb']:.0f}"])
    return rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def summary_lines(results: dict) -> list[str]:
    s = results.get("summary", {})
    lines = []
    for key, text in s.get("lines", {}).items():
        lines.append(text)
    for run in results["runs"]:
        if run.get("skipped"):
            lines.append(f"skipped {label(run)}: {run['skipped']}")
    return lines


def print_report(results: dict) -> None:
    m = results["machine"]
    bw = results["bandwidth"]
    print(f"\nmachine: {m['cpu']} ({m['cores']} cores), {m['ram_gb']:.0f} GB RAM; torch {m['torch']}, "
          f"onnxruntime {m['onnxruntime']}, transformers {m['transformers']}")
    print(f"memory bandwidth ({bw['threads']} threads): numpy read {bw['read_gb_s']:.1f} GB/s, torch read "
          f"{bw.get('torch_read_gb_s', 0):.1f} GB/s, copy (r+w) {bw['copy_gb_s']:.1f} GB/s -> limit "
          f"{bw['limit_gb_s']:.1f} GB/s (read)")
    print(f"model {results['config']['model']}; steps/s = 1 / min step time over "
          f"{results['config']['repeats']} bursts of {results['config']['burst']} steps\n")
    print(text_table(STEP_HEADER, step_rows(results)))
    rows = e2e_rows(results)
    if rows:
        print("\nend to end, batch 1:")
        print(text_table(E2E_HEADER, rows))
    print()
    for line in summary_lines(results):
        print(line)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    batch0, frames0 = cfg["frames_sweep_batch"], cfg["batch_sweep_frames"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {}
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for run in results["runs"]:
        pts = run.get("points", [])
        if not pts:
            continue
        color = colors.setdefault(label(run), cycle[len(colors) % len(cycle)])
        style = "-" if run["workload"] == "edit" else ":"
        f = sorted((p for p in pts if p["batch"] == batch0), key=lambda p: p["frames"])
        ax1.plot([p["frames"] for p in f], [p["steps_s"] for p in f], style, marker="o", color=color,
                 label=label(run))
        b = sorted((p for p in pts if p["frames"] == frames0), key=lambda p: p["batch"])
        ax2.plot([p["batch"] for p in b], [p["steps_s"] for p in b], style, marker="o", color=color,
                 label=label(run))
    for name, line in results.get("roofline_lines", {}).items():
        ax1.plot(line["frames"], line["frames_steps_s"], "--", color="gray" if "fp32" in name else "black",
                 label=f"roofline {name}")
        ax2.plot(line["batch"], line["batch_steps_s"], "--", color="gray" if "fp32" in name else "black",
                 label=f"roofline {name}")
    bw = results["bandwidth"]["limit_gb_s"]
    ax1.set(xlabel="frames of past (position)", ylabel="decoder steps / s",
            title=f"{cfg['model']}, batch {batch0} (edit rows {2 * (1 + batch0)}, generate rows {2 * batch0})")
    ax2.set(xlabel="batch (edit targets / generate prompts)", ylabel="decoder steps / s",
            title=f"{frames0} frames of past")
    for ax in (ax1, ax2):
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7)
    fig.suptitle(f"{results['machine']['cpu']}, {results['machine']['cores']} cores, bandwidth {bw:.1f} GB/s "
                 "(dashed: memory roofline of the edit)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(results: dict) -> str:
    """The tables of a results.json as markdown (for docs/benchmarks.md)."""
    bw = results["bandwidth"]
    m = results["machine"]
    parts = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']:.0f} GB RAM; torch {m['torch']}, onnxruntime "
        f"{m['onnxruntime']}, transformers {m['transformers']}, Python {m['python']}.",
        f"Memory bandwidth ({bw['threads']} threads, {bw['buffer_mb']} MiB buffer, best of {bw['repeats']}): "
        f"numpy read {bw['read_gb_s']:.1f} GB/s, torch read {bw.get('torch_read_gb_s', 0):.1f} GB/s, copy (read+write) "
        f"{bw['copy_gb_s']:.1f} GB/s; roofline limit {bw['limit_gb_s']:.1f} GB/s.",
        "", markdown_table(STEP_HEADER, step_rows(results)), "",
        "End to end, batch 1:", "", markdown_table(E2E_HEADER, e2e_rows(results)), "",
    ]
    parts += [f"- {line}" for line in summary_lines(results)]
    return "\n".join(parts)


if __name__ == "__main__":
    import sys

    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
