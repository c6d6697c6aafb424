"""editgen export: a checkpoint -> an engine directory for `--engine` (ONNX Runtime)."""

from __future__ import annotations

import sys

from editgen.cli.common import MODEL_HELP, add_parser
from editgen.cli.outputs import atomic_dir, check_writable_dir
from editgen.engine.manifest import EXPORT_DTYPES, QUANTIZE


def register(sub) -> None:
    p = add_parser(sub, "export", help="export a model to ONNX graphs for the ORT backend (--engine)")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("-o", "--output", required=True, help="engine directory to write (files in it are replaced)")
    p.add_argument("--dtype", choices=EXPORT_DTYPES, default="fp32",
                   help="weights and compute of the decoder graphs: fp32, or fp16 (for GPU)")
    p.add_argument("--quantize", choices=QUANTIZE, default=None,
                   help="int8: the decoder step's weight matmuls in int8, and the CPU int8 step's weights "
                        "(for CPU); agreement with fp32 and the CPU path the engine runs go in the manifest")
    p.set_defaults(func=run)


def run(args) -> int:
    from editgen.model.loading import load_musicgen
    from editgen.export.onnx_export import check_options, export_engine

    check_options(args.dtype, args.quantize)  # before the model loads
    out = check_writable_dir(args.output)
    loaded = load_musicgen(args.model)
    print(f"exporting {loaded.name} ({args.dtype}{', int8' if args.quantize else ''}) to {out}", file=sys.stderr)
    with atomic_dir(out) as tmp:
        manifest = export_engine(loaded, tmp, dtype=args.dtype, quantize=args.quantize,
                                 log=lambda line: print(line, file=sys.stderr))
    print(validation_table(manifest))
    print(f"wrote {out}: run it with `editgen generate --engine {out} ...`")
    return 0


def validation_table(manifest) -> str:
    """One line per graph output of `manifest` (editgen.engine.manifest.Manifest): ORT vs
    torch max abs error (or code mismatch); then the int8 agreements."""
    from editgen.export.onnx_export import format_error

    lines = [f"{'graph':<15} {'dtype':<6} {'output':<11} {'max abs error':>14} {'tolerance':>10}"]
    for name, graph in manifest.graphs.items():
        v = graph.validation
        dtype = graph.dtype  # validation is of the fp32/fp16 graph; int8 agreement below
        if "skipped" in v:
            lines.append(f"{name:<15} {dtype:<6} {'-':<11} {'skipped':>14}   {v['skipped']}")
            continue
        for out, e in v["errors"].items():
            lines.append(f"{name:<15} {dtype:<6} {out:<11} {format_error(e):>14} {v['tolerance']:>10g}")
    int8 = manifest.int8
    if int8:
        lines.append(f"int8 decoder_step ({int8['method']}): token agreement with fp32 "
                     f"{int8['teacher_forced_token_agreement']:.4f} teacher-forced, "
                     f"{int8['free_running_token_agreement']:.4f} free-running over {int8['steps']} steps; "
                     f"max logit error {int8['max_logit_error']:.3g}")
    int8_step = manifest.int8_step
    if int8_step:
        from editgen.export.int8_step import cpu_path_line

        a = int8_step.get("agreement")
        if a:
            lines.append(f"int8 step: token agreement with fp32 {a['teacher_forced_token_agreement']:.4f} "
                         f"teacher-forced, {a['free_running_token_agreement']:.4f} free-running; max logit error "
                         f"{a['max_logit_error']:.3g}")
        lines.append(cpu_path_line(int8_step))
    codec = manifest.int8_codec
    if codec:
        from editgen.export.int8_codec import codec_line

        lines.append(codec_line(codec))
    return "\n".join(lines)
