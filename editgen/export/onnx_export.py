"""`editgen export`: a MusicGen checkpoint -> a directory the ORT backend runs without torch.

    text_encoder.onnx   input_ids, attention_mask [prompts, T] -> hidden [prompts, T, text_hidden]
    cross_kv.onnx       hidden [rows, T, text_hidden], text_mask [rows, T] -> cross_k, cross_v
    decoder_step.onnx   the step contract (docs/design.md) -> logits, new_kv, cross_attn
    encodec_decode.onnx codes [clips, K, frames] -> audio [clips, samples]
    encodec_encode.onnx wav [samples] -> codes [K, frames]
    tokenizer.json, manifest.json (editgen.engine.manifest)

Each graph is exported with the TorchScript exporter (`dynamo=False`), re-saved (with
ONNX external data when over 2 GB), run by ONNX Runtime on example inputs and compared
with its torch module; the max abs error per output goes into the manifest and an error
over tolerance raises ExportValidationError.

`dtype="fp16"` converts cross_kv and decoder_step (the per-request hot path) to fp16
weights and compute, keeping their float inputs/outputs fp32 (so the runtime and its KV
cache are the same for every export) and Softmax in fp32; T5 (fp16 overflow) and EnCodec
stay fp32. `quantize="int8"` replaces decoder_step with a graph whose weight matmuls are
int8 (editgen.export.quantize) and records its agreement with fp32 in the manifest; it
also writes the weights of the CPU int8 step (editgen.export.int8_step), measures its
agreement and the step time of both CPU paths, and records which one the engine runs.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from editgen.engine.manifest import EXPORT_DTYPES, QUANTIZE, GraphInfo, Manifest, TensorSpec
from editgen.errors import InvalidRequestError, first_line
from editgen.export.graphs import DYNAMIC_AXES, GraphDef, encodec_min_samples, graph_defs
from editgen.export.validate import TOLERANCE, check, cpu_session, max_errors

OPSET = 17
TOKENIZER_FILE = "tokenizer.json"
EXTERNAL_DATA_BYTES = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with headroom
EXAMPLE_PROMPTS = ("lofi piano with warm drums", "80s pop track with bassy drums and synth")


def check_options(dtype: str, quantize: str | None) -> None:
    if dtype not in EXPORT_DTYPES:
        raise InvalidRequestError(f"dtype {dtype!r} is not one of {', '.join(EXPORT_DTYPES)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise InvalidRequestError(f"quantize {quantize!r} is not one of {', '.join(QUANTIZE)}")
    if quantize == "int8" and dtype != "fp32":
        raise InvalidRequestError("--quantize int8 quantizes an fp32 export (for CPU): drop --dtype fp16")


def export_engine(loaded, out_dir: str | Path, *, dtype: str = "fp32", quantize: str | None = None,
                  log: Callable[[str], None] = print,
                  external_data_bytes: int = EXTERNAL_DATA_BYTES) -> Manifest:
    """Export `loaded` (a LoadedMusicgen) into `out_dir` (created; files in it replaced).

    The caller makes the directory atomic (editgen.cli.outputs.atomic_dir). Returns the
    manifest written to out_dir/manifest.json. `external_data_bytes`: graphs with more
    weight bytes than this store them in `<file>.data` beside the graph."""
    check_options(dtype, quantize)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shapes = loaded.shapes
    prompts = tuple((t.ids, t.mask) for t in map(loaded.tokenizer.encode, EXAMPLE_PROMPTS))
    graphs = {}
    for gd in graph_defs(loaded.model, shapes, prompts):
        start = time.perf_counter()
        entry = export_graph(gd, out, dtype if gd.dtype_follows_export else "fp32", external_data_bytes)
        graphs[gd.name] = GraphInfo.from_dict(gd.name, entry, "the export")
        log(f"  {gd.name:<15} {entry['dtype']}  {_describe(entry)}  ({time.perf_counter() - start:.1f} s)")
    (out / TOKENIZER_FILE).write_text(loaded.tokenizer_json, encoding="utf-8")
    manifest = Manifest(
        model=loaded.name, is_random=bool(loaded.is_random), dtype=dtype, quantize=quantize, opset=OPSET,
        exporter=f"torch {torch.__version__} (TorchScript, dynamo=False), onnx {onnx.__version__}, "
                 f"onnxruntime {_ort_version()}",
        shapes=shapes, tokenizer=TOKENIZER_FILE, dynamic_axes=DYNAMIC_AXES, graphs=graphs,
        encodec_min_samples=encodec_min_samples(shapes))
    manifest.write(out)
    if quantize == "int8":
        from editgen.export.int8_codec import codec_agreement, codec_line, export_int8_codec
        from editgen.export.int8_step import export_int8_step, measure_paths
        from editgen.export.quantize import quantize_engine_int8, replace_with_int8

        manifest = dataclasses.replace(manifest, int8_step=export_int8_step(loaded.model, shapes, out, log),
                                       int8_codec=export_int8_codec(loaded.model, shapes, out, log))
        manifest.write(out)  # the int8 codec reads it to measure itself
        codec = {**manifest.int8_codec, "agreement": codec_agreement(out)}
        manifest = dataclasses.replace(manifest, int8_codec=codec)
        log(f"  {codec_line(codec)}")
        manifest.write(out)
        start = time.perf_counter()
        report = quantize_engine_int8(out, manifest.graphs["decoder_step"], external_data_bytes)
        manifest = dataclasses.replace(manifest, int8=report)
        log(f"  decoder_step    int8  method {report['method']}: teacher-forced token agreement "
            f"{report['teacher_forced_token_agreement']:.4f}, free-running "
            f"{report['free_running_token_agreement']:.4f} over {report['steps']} steps, "
            f"max logit error {report['max_logit_error']:.3g} ({time.perf_counter() - start:.1f} s)")
        manifest = dataclasses.replace(manifest, int8_step={**manifest.int8_step, **measure_paths(out, log)})
        step = replace_with_int8(out, manifest.graphs["decoder_step"])
        manifest = dataclasses.replace(manifest, graphs={**manifest.graphs, "decoder_step": step})
        manifest.write(out)
    return manifest


def export_graph(gd: GraphDef, out: Path, dtype: str, external_data_bytes: int = EXTERNAL_DATA_BYTES) -> dict:
    """Export, (convert,) save and validate one graph; returns its manifest entry
    (GraphInfo.to_dict's form: GraphInfo.from_dict checks it)."""
    examples = gd.examples()
    with tempfile.TemporaryDirectory(prefix=f".{gd.name}.", dir=out) as tmp:
        raw = Path(tmp) / gd.file
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings on shape arithmetic, deprecations
            torch.onnx.export(gd.module, examples[0], str(raw), dynamo=False, opset_version=OPSET,
                              input_names=list(gd.inputs), output_names=list(gd.outputs),
                              dynamic_axes=gd.dynamic_axes, do_constant_folding=True)
        model = onnx.load(str(raw))  # pulls in external data the exporter may have written
    _set_static_output_dims(model, gd, examples[0])
    if dtype == "fp16":
        model = to_fp16(model, out, external_data_bytes)
    data_file = save_model(model, out / gd.file, external_data_bytes)
    entry = {
        "file": gd.file, "data_file": data_file, "dtype": dtype, "quantize": None,
        "inputs": [s.to_dict() for s in io_specs(model.graph.input)],
        "outputs": [s.to_dict() for s in io_specs(model.graph.output)],
    }
    del model
    entry["validation"] = validate_graph(gd, out / gd.file, dtype, examples)
    return entry


def validate_graph(gd: GraphDef, path: Path, dtype: str, examples) -> dict:
    tolerance = TOLERANCE[dtype]
    try:
        session = cpu_session(path)
    except Exception as exc:  # fp16 graphs may need kernels the CPU provider lacks
        if dtype == "fp16":
            return {"skipped": f"not runnable on the CPU provider: {first_line(exc)}", "tolerance": tolerance}
        raise
    try:
        errors = max_errors(session, gd.module, examples, gd.inputs, gd.outputs)
    except Exception as exc:
        if dtype == "fp16":
            return {"skipped": f"CPU provider failed: {first_line(exc)}", "tolerance": tolerance}
        raise
    check(gd.name, errors, tolerance)
    return {"errors": errors, "tolerance": tolerance, "examples": len(examples), "provider": "CPUExecutionProvider"}


def to_fp16(model: onnx.ModelProto, scratch: Path, external_data_bytes: int = EXTERNAL_DATA_BYTES) -> onnx.ModelProto:
    """fp16 weights and compute; graph inputs/outputs and Softmax stay fp32.

    The additive mask becomes -65504 (fp16's lowest) instead of finfo(float32).min: masked
    scores still get zero weight, and a fully masked row (null text) stays uniform because
    its K rows are all equal (CrossKV zeroes masked positions), so its scores are equal."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    block = DEFAULT_OP_BLOCK_LIST + ["Softmax"]
    if weight_bytes(model) <= external_data_bytes:
        return convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    # In-memory shape inference stops at protobuf's 2 GB: infer through files instead.
    with tempfile.TemporaryDirectory(prefix=".fp16.", dir=scratch) as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        save_model(model, src, 0)
        onnx.shape_inference.infer_shapes_path(str(src), str(dst))
        inferred = onnx.load(str(dst))  # external data still in.onnx.data, loaded here
    return convert_float_to_float16(inferred, keep_io_types=True, op_block_list=block, disable_shape_infer=True)


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) or t.ByteSize() for t in model.graph.initializer)


def save_model(model: onnx.ModelProto, path: Path, external_data_bytes: int = EXTERNAL_DATA_BYTES) -> str | None:
    """Save `model` at `path`; weights go to `<name>.data` when over `external_data_bytes`.
    Returns the data file's name, or None."""
    data_name = path.name + ".data"
    for stale in (path, path.with_name(data_name)):
        stale.unlink(missing_ok=True)
    if weight_bytes(model) <= external_data_bytes:
        onnx.save_model(model, str(path))
        return None
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
    return data_name


def _set_static_output_dims(model: onnx.ModelProto, gd: GraphDef, example) -> None:
    """Output dims the exporter could not infer (e.g. T through T5) are static: write the
    traced size, so every output dim is a number or a named dynamic axis."""
    with torch.inference_mode():
        ref = gd.module(*example)
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    for value, tensor in zip(model.graph.output, ref):
        named = gd.dynamic_axes.get(value.name, {})
        dims = value.type.tensor_type.shape.dim
        assert len(dims) == tensor.dim(), (value.name, len(dims), tensor.shape)
        for i, d in enumerate(dims):
            if i in named:
                d.dim_param = named[i]
            elif not d.HasField("dim_value"):
                d.dim_value = int(tensor.shape[i])


def io_specs(values) -> list[TensorSpec]:
    """Graph inputs or outputs -> TensorSpec with named dynamic axes (from dynamic_axes)."""
    specs = []
    for v in values:
        t = v.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name
        shape = []
        for d in t.shape.dim:
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            else:
                assert d.dim_param in DYNAMIC_AXES, (v.name, d.dim_param)  # every dynamic axis is named
                shape.append(d.dim_param)
        specs.append(TensorSpec(v.name, dtype, tuple(shape)))
    return specs


def _describe(entry: dict) -> str:
    v = entry["validation"]
    if "skipped" in v:
        return f"validation skipped: {v['skipped']}"
    return "max abs error: " + ", ".join(f"{name} {format_error(e)}" for name, e in v["errors"].items())


def format_error(e: dict) -> str:
    """One output's validation entry: `3.1e-06`, or `0.01 differ` for integer codes."""
    if "mismatch_fraction" in e:
        return f"{e['mismatch_fraction']:.2g} differ"
    return f"{e['max_abs_error']:.3g}"


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
