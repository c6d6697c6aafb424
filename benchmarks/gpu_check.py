"""One script for a lent GPU (at most ~5 minutes on an H100/H200): correctness, then timings.

    python -m benchmarks.gpu_check --out gpu-check              # random:small shapes, on CUDA
    TRITON_INTERPRET=1 python -m benchmarks.gpu_check --quick --out /tmp/gc   # random:tiny on CPU (CI)

1. kernels: the Triton kernels (editgen.kernels) against their torch references at the
   model's sizes, fp32 / fp16 / bf16 inputs: max abs error of the cross-attention output
   and maps (a random edit of every kind) and of the decode self-attention output
   (random lengths, self-injection on some rows).
2. codes: greedy codes (guidance 3) of the triton backend vs the torch reference on the
   same device, fp32 with TF32 off, `--steps` steps, plain generation and each edit op:
   identical, or the first divergence with the reference's top-1/top-2 logit gap there
   (a near-tie: the two backends' rounding differs, not their math).
3. agreement: fp16 and bf16 pools vs fp32, the fraction of equal greedy codes.
4. timings, same run: a `--seconds` edit end to end through the public API (triton
   backend, fp16 pool); steps/s at 1/4/16/64 rows; transformers `generate` of the same
   4 rows in fp32 and fp16 (`--hf-seconds`); the bytes one step must read (fp16 weights
   + the cache at mid-request + cross K/V) over `--bandwidth`: the floor.
5. cuda_lib: the CUDA C++ library's edited cross-attention (libeditgen_kernels, built
   first: `cmake -S . -B build && cmake --build build`, then `--cuda-lib build`) against
   the Triton kernel, fp32: max abs difference of outputs and maps and the time per call
   (min of repeats) at 4 and 64 rows; then the triton backend with
   cross_attention="cuda-lib": greedy codes of an edit (vs the torch reference, as in 2,
   and vs the Triton kernel) and steps/s at 4 rows next to "triton".
   {"skipped": why} without a GPU or the library.
Writes results.json and gpu_check.png into --out. The triton backend runs its kernels
eagerly (no CUDA graphs yet), so the timings are an upper bound of what it will do.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import GUIDANCE, SOURCE, plain_prompts

PROG = "python -m benchmarks.gpu_check"
EDIT_TARGETS = {"replace": dict(target="lofi guitar with warm drums"),
                "refine": dict(target="lofi piano with warm jazz drums", op="refine"),
                "reweight": dict(op="reweight", word_weights={"piano": 1.8}),
                "paper-text": dict(target="lofi guitar with warm drums", setting="paper-text")}
FULL = dict(preset="small", steps=200, seconds=30.0, hf_seconds=10.0, rows=(1, 4, 16, 64), past=100, timed_steps=50,
            workloads=("plain", *EDIT_TARGETS), half_workloads=("plain", "replace"), half_dtypes=("float16", "bfloat16"),
            kernel_positions=1536)
# Under Triton's interpreter every kernel program runs in numpy (~0.3 s per tiny step):
# the quick run only exercises the script's code paths.
# An interpreted tiny step takes ~1 s: one workload of 7 steps (4 frames, the shortest clip)
# per section, the timed edit that clip too, one half dtype, one row count and 192
# positions keep every section running.
QUICK = dict(preset="tiny", steps=7, seconds=0.08, hf_seconds=0.1, rows=(4,), past=2, timed_steps=1,
             workloads=("replace",), half_workloads=("plain",), half_dtypes=("float16",), kernel_positions=192)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--quick", action="store_true", help="random:tiny, a few steps: checks the script (CPU CI)")
    p.add_argument("--bandwidth", type=float, default=4.8e12, help="memory bandwidth, bytes/s (H200: 4.8e12)")
    p.add_argument("--cuda-lib", type=Path, default=None,
                   help="build directory of libeditgen_kernels (default: $EDITGEN_KERNELS_LIB)")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    import torch

    from editgen.engine.backends.kernel_backend import interpreted

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not interpreted():
        print(f"{PROG}: no CUDA device; on CPU set TRITON_INTERPRET=1 (and use --quick)", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    from editgen.model.loading import load_musicgen

    loaded = load_musicgen(f"random:{cfg['preset']}")
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter)",
               "preset": cfg["preset"], "torch": torch.__version__, "tf32": False}
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    sections = {"kernels": lambda: kernel_errors(loaded.shapes, device, cfg["kernel_positions"]),
                "codes": lambda: code_comparison(loaded, device, cfg["steps"], cfg["workloads"]),
                "agreement": lambda: half_agreement(loaded, device, cfg["steps"], cfg["half_workloads"],
                                                    cfg["half_dtypes"]),
                "timings": lambda: timings(loaded, device, cfg, args.bandwidth),
                "cuda_lib": lambda: cuda_lib_comparison(loaded, device, cfg, args.cuda_lib)}
    for name, section in sections.items():
        results[name] = section()
        results["wall_seconds"] = time.perf_counter() - started
        print(name, json.dumps(results[name]), flush=True)
        # After every section: a device loan that ends mid-run still leaves the sections done.
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out / "gpu_check.png")
    print(f"wrote {args.out}/results.json, gpu_check.png ({results['wall_seconds']:.0f} s)")
    return 0


# -- 1. kernels ------------------------------------------------------------------------------


def kernel_errors(shapes, device, positions: int) -> dict:
    import torch

    from editgen.kernels import cross_attention, decode_attention, reference

    g = torch.Generator().manual_seed(0)
    R, H, D, T = 4, shapes.num_heads, shapes.head_dim, shapes.max_text_tokens
    P = min(shapes.max_positions, positions)

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    mask = (torch.arange(T)[None] < torch.tensor([[9], [14], [T], [0]])).float()  # last row: CFG null text
    cross = dict(q=rand(R, H, D), k=rand(R, H, T, D), v=rand(R, H, T, D), text_mask=mask,
                 src_row=torch.tensor([0, 0, 0, 3]), use_captured=torch.tensor([0.0, 0.0, 1.0, 0.0]),
                 captured=torch.softmax(rand(R, H, T), -1), mapper=torch.softmax(rand(R, T, T) * 3, -1),
                 alpha=(torch.rand(R, T, generator=g) > 0.3).float(), weight=torch.rand(R, T, generator=g) * 4 - 2,
                 window=(torch.rand(R, T, generator=g) > 0.2).float(), keep=torch.tensor([1.0, 0.0, 0.5, 1.0]))
    want_out, want_p = reference.edited_cross_attention_ref(**cross, scale=D ** -0.5)
    positions = torch.tensor([P - 1, P - 1, 17, 0])
    decode = dict(q=rand(R, H, D), k_new=rand(R, H, D), v_new=rand(R, H, D), slots=torch.tensor([2, 0, 3, 1]),
                  positions=positions, src_row=torch.tensor([0, 0, 2, 3]), self_b=torch.tensor([0.0, 0.75, 0.0, 0.0]))
    cache = rand(2, 4, H, P, D)
    want_self = reference.decode_self_attention_ref(**decode, k_cache=cache[0].clone(), v_cache=cache[1].clone(),
                                                    scale=D ** -0.5)
    out = {}
    for dtype in ("float32", "float16", "bfloat16"):
        dt = getattr(torch, dtype)

        def on(t):
            return t.to(device=device, dtype=dt if t.is_floating_point() and t.dim() >= 3 else t.dtype)

        args = {k: on(v) for k, v in cross.items()}
        got_out, got_p = cross_attention.edited_cross_attention(**args, scale=D ** -0.5,
                                                                probs=torch.empty(R, H, T, device=device))
        kc, vc = on(cache[0].clone()), on(cache[1].clone())
        got_self = decode_attention.decode_self_attention(**{k: on(v) for k, v in decode.items()},
                                                          k_cache=kc, v_cache=vc, scale=D ** -0.5)
        out[dtype] = {"cross_out": _err(got_out, want_out), "cross_maps": _err(got_p, want_p),
                      "self_out": _err(got_self, want_self)}
    return out


def _err(got, want) -> float:
    return float((got.float().cpu() - want.float().cpu()).abs().max())


# -- 2. codes and 3. agreement -----------------------------------------------------------------


def _logits_recorder():
    """A StepObserver keeping each step's logits [R, K, vocab] (host copies), when the
    backend returns them (a backend that samples on its device returns codes)."""
    from editgen.engine.core import StepObserver

    class LogitsRecorder(StepObserver):
        def __init__(self):
            self.logits = []

        def after_step(self, batch, outputs, seconds, requests):
            if outputs.logits is not None:
                self.logits.append(outputs.logits.copy())

    return LogitsRecorder()


def _run(backend, workload: str, steps: int):
    """Greedy codes [rows_cond, K, steps + 1] (delay pattern kept) and the recorded logits."""
    from editgen.engine.core import run_alone
    from editgen.engine.edit import EditSpec
    from editgen.engine.jobs import edit_job
    from editgen.engine.options import GenerationOptions
    from editgen.engine.requests import Request

    shapes = backend.shapes
    seconds = (steps - shapes.num_codebooks + 1) / shapes.frame_rate
    options = GenerationOptions(seconds=seconds, guidance_scale=GUIDANCE, greedy=True)
    rec = _logits_recorder()
    if workload == "plain":
        request = Request(shapes, [backend.tokenizer.encode(SOURCE)], options)
    else:
        request = edit_job(backend, [EditSpec(source=SOURCE, **EDIT_TARGETS[workload])], options).request
    run_alone(backend, request, observers=[rec])
    return request.sequence.copy(), rec.logits, request.rows_cond


def code_comparison(loaded, device, steps: int, workloads) -> dict:
    from editgen.engine.backends.kernel_backend import KernelBackend
    from editgen.engine.backends.torch_backend import TorchBackend

    ref, ours = TorchBackend(loaded, device=device), KernelBackend(loaded, device=device, dtype="float32")
    out = {}
    for workload in workloads:
        want, want_logits, rows_cond = _run(ref, workload, steps)
        got, _, _ = _run(ours, workload, steps)
        out[workload] = _first_divergence(want, got, want_logits, rows_cond)
    return out


def _first_divergence(want, got, want_logits, rows_cond) -> dict:
    """Identical, or where codes first differ and the reference's guided top-1 - top-2 gap there."""
    if np.array_equal(want, got):
        return {"identical": True, "steps": int(want.shape[-1] - 1)}
    diff = np.argwhere(want != got)  # [n, 3]: row, codebook, position
    row, book, pos = diff[np.argmin(diff[:, 2])]
    logits = want_logits[pos - 1]  # the step that sampled position `pos`
    guided = logits[rows_cond + row] + GUIDANCE * (logits[row] - logits[rows_cond + row])  # [K, vocab]
    top2 = np.sort(guided[book])[-2:]
    return {"identical": False, "first_position": int(pos), "row": int(row), "codebook": int(book),
            "top1_minus_top2": float(top2[1] - top2[0]), "differing_fraction": float((want != got).mean())}


def half_agreement(loaded, device, steps: int, workloads, dtypes) -> dict:
    from editgen.engine.backends.kernel_backend import KernelBackend

    out = {}
    full = {w: _run(KernelBackend(loaded, device=device, dtype="float32"), w, steps)[0] for w in workloads}
    for dtype in dtypes:
        backend = KernelBackend(loaded, device=device, dtype=dtype)
        out[dtype] = {w: float((_run(backend, w, steps)[0] == codes).mean()) for w, codes in full.items()}
    return out


# -- 4. timings --------------------------------------------------------------------------------


def timings(loaded, device, cfg, bandwidth: float) -> dict:
    import torch

    from editgen.engine.backends.kernel_backend import KernelBackend
    from editgen.engine.edit import EditSpec
    from editgen.engine.jobs import edit
    from editgen.engine.options import GenerationOptions

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    backend = KernelBackend(loaded, device=device, dtype="float16")
    shapes = backend.shapes
    spec = EditSpec(source=SOURCE, **EDIT_TARGETS["replace"])
    if device == "cuda":  # warm-up: compiles the kernels (the interpreter compiles nothing, and takes ~1 s a step)
        edit(backend, [spec], GenerationOptions(seconds=min(1.0, cfg["seconds"])))
        sync()
    start = time.perf_counter()
    edit(backend, [spec], GenerationOptions(seconds=cfg["seconds"]))
    sync()
    out = {"edit_seconds": cfg["seconds"], "edit_e2e_s": time.perf_counter() - start,
           "steps_per_s": {str(r): _steps_per_s(backend, r, cfg["past"], cfg["timed_steps"], sync)
                           for r in cfg["rows"]}}
    for dtype in ("float32", "float16"):
        out[f"transformers_{dtype}_s"] = _transformers(loaded, device, getattr(torch, dtype), cfg["hf_seconds"], sync)
    out["transformers_seconds"] = cfg["hf_seconds"]
    out["bytes_per_step"] = _bytes_per_step(loaded, shapes, rows=4, past=shapes.steps_for_frames(
        round(cfg["seconds"] * shapes.frame_rate)) // 2)
    out["bandwidth"] = bandwidth
    out["floor_ms_per_step"] = 1000 * out["bytes_per_step"] / bandwidth
    return out


def _steps_per_s(backend, rows: int, past: int, steps: int, sync) -> float:
    """Plain generation of rows (1: one prompt, no CFG; else rows/2 prompts with CFG) at position `past`."""
    from editgen.engine.core import EngineCore
    from editgen.engine.options import GenerationOptions
    from editgen.engine.requests import Request

    shapes = backend.shapes
    n = 1 if rows == 1 else rows // 2
    options = GenerationOptions(seconds=(past + steps + 2) / shapes.frame_rate, guidance_scale=GUIDANCE if rows > 1 else 1.0)
    request = Request(shapes, [backend.tokenizer.encode(p) for p in plain_prompts(n)], options)
    core = EngineCore(backend, max_rows=max(request.rows, 2))
    core.submit(request)
    for _ in range(past):
        core.step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        core.step()
    sync()
    core.cancel(request)
    return steps / (time.perf_counter() - start)


def _transformers(loaded, device, dtype, seconds: float, sync) -> float:
    """Seconds of transformers `generate` of the edit's 4 rows (2 prompts, guidance 3, sampling)."""
    import copy

    import torch

    model = copy.deepcopy(loaded.model).to(device=device, dtype=dtype).eval()
    enc = [loaded.tokenizer.encode(p) for p in (SOURCE, EDIT_TARGETS["replace"]["target"])]
    ids = torch.from_numpy(np.stack([e.ids for e in enc])).to(device)
    mask = torch.from_numpy(np.stack([e.mask for e in enc])).to(device)
    steps = loaded.shapes.steps_for_frames(round(seconds * loaded.shapes.frame_rate))
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=mask, do_sample=True, guidance_scale=GUIDANCE, max_new_tokens=8)
        sync()
        start = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=mask, do_sample=True, guidance_scale=GUIDANCE,
                       max_new_tokens=steps)
        sync()
    return time.perf_counter() - start


def _bytes_per_step(loaded, shapes, rows: int, past: int) -> int:
    """fp16 decoder weights + self K/V at `past` positions + cross K/V, for `rows` rows."""
    decoder = loaded.model.decoder
    weights = 2 * sum(p.numel() for p in decoder.parameters())
    kv = 2 * rows * shapes.num_layers * 2 * shapes.num_heads * shapes.head_dim * (past + shapes.max_text_tokens)
    return int(weights + kv)


# -- 5. the CUDA C++ library -------------------------------------------------------------------


def cuda_lib_comparison(loaded, device, cfg, build_dir) -> dict:
    import os

    import torch

    from editgen.engine.backends.kernel_backend import KernelBackend
    from editgen.engine.backends.torch_backend import TorchBackend
    from editgen.kernels import cross_attention, cuda_lib

    if device != "cuda":
        return {"skipped": "no CUDA device: the CUDA C++ library runs only on an NVIDIA GPU"}
    try:
        lib = cuda_lib.load(build_dir)
    except cuda_lib.CudaLibraryError as exc:
        return {"skipped": str(exc)}
    os.environ[cuda_lib.LIBRARY_ENV] = str(lib.path)  # where KernelBackend(cross_attention="cuda-lib") loads it
    out = {"library": str(lib.path), "kernel": {}}
    shapes, g = loaded.shapes, torch.Generator().manual_seed(1)
    for rows in (4, 64):
        x = {k: t.to(device) for k, t in _cross_case(shapes, rows, g).items()}
        scale = shapes.head_dim ** -0.5
        probs = torch.empty(rows, shapes.num_heads, shapes.max_text_tokens, device=device)
        want_out, _ = cross_attention.edited_cross_attention(**x, scale=scale, probs=probs)
        got_out, got_p = lib.edited_cross_attention(**x, scale=scale)
        out["kernel"][str(rows)] = {
            "out_max_abs_diff": _err(got_out, want_out), "maps_max_abs_diff": _err(got_p, probs),
            "triton_ms": _min_ms(lambda: cross_attention.edited_cross_attention(**x, scale=scale, probs=probs)),
            "cuda_lib_ms": _min_ms(lambda: lib.edited_cross_attention(**x, scale=scale))}
    # The triton backend samples on its device (no logits to record): the torch reference
    # gives the logit gap at a first divergence, as in section 2.
    ref = _run(TorchBackend(loaded, device=device), "replace", cfg["steps"])
    triton = _run(KernelBackend(loaded, device=device), "replace", cfg["steps"])[0]
    got = _run(KernelBackend(loaded, device=device, cross_attention="cuda-lib"), "replace", cfg["steps"])[0]
    out["codes_vs_torch"] = _first_divergence(ref[0], got, ref[1], ref[2])
    out["codes_equal_to_triton_kernel"] = bool(np.array_equal(got, triton))
    out["steps_per_s_4_rows"] = {
        kind: _steps_per_s(KernelBackend(loaded, device=device, cross_attention=kind), 4, cfg["past"],
                           cfg["timed_steps"], torch.cuda.synchronize) for kind in ("triton", "cuda-lib")}
    return out


def _cross_case(shapes, rows: int, g) -> dict:
    """fp32 arguments of the edited cross-attention at the model's sizes: the first half of
    the rows conditional (text of random lengths), every conditional row after the first
    edited from row 0 (mapper, refine alpha, reweight, window, keep 0.5), the second half
    null text; the conditional row before the middle reads captured maps."""
    import torch

    H, D, T = shapes.num_heads, shapes.head_dim, shapes.max_text_tokens
    half = rows // 2
    lengths = torch.cat([torch.randint(2, T + 1, (half,), generator=g), torch.zeros(rows - half, dtype=torch.int64)])
    src = torch.arange(rows)
    src[1:half] = 0
    use_captured = torch.zeros(rows)
    use_captured[half - 1] = 1.0
    def randn(*shape):
        return torch.randn(*shape, generator=g)

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    return dict(q=randn(rows, H, D), k=randn(rows, H, T, D), v=randn(rows, H, T, D),
                text_mask=(torch.arange(T)[None] < lengths[:, None]).float(), src_row=src, use_captured=use_captured,
                captured=torch.softmax(randn(rows, H, T), -1), mapper=torch.softmax(randn(rows, T, T) * 3, -1),
                alpha=(rand(rows, T) > 0.3).float(), weight=rand(rows, T) * 4 - 2, window=(rand(rows, T) > 0.2).float(),
                keep=torch.where(src == torch.arange(rows), 1.0, 0.5))


def _min_ms(call, repeats: int = 50) -> float:
    """Milliseconds of one call (launch + kernel), the minimum of `repeats`, synchronized."""
    import torch

    call()  # compiles or loads on first use
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = results["timings"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    names = ["ours (fp16, eager kernels)", "transformers fp32", "transformers fp16"]
    scale = t["edit_seconds"] / t["transformers_seconds"]  # transformers measured at hf_seconds
    values = [t["edit_e2e_s"], t["transformers_float32_s"] * scale, t["transformers_float16_s"] * scale]
    a.bar(names, values, color=["tab:green", "tab:gray", "tab:gray"])
    a.set_ylabel(f"seconds for a {t['edit_seconds']:g} s edit (transformers scaled from {t['transformers_seconds']:g} s)")
    a.tick_params(axis="x", labelsize=7)
    rows = sorted(t["steps_per_s"], key=int)
    b.plot([int(r) for r in rows], [t["steps_per_s"][r] for r in rows], marker="o")
    b.set_xscale("log", base=2)
    b.set_xlabel("rows per step")
    b.set_ylabel("steps/s")
    fig.suptitle(f"gpu_check on {results['device']} (random:{results['preset']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
