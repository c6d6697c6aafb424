"""Memory-bandwidth roofline: measured bandwidth of this machine and bytes read per step.

A decoder step at small batch is memory bound: every step reads all decoder weights once
and the KV cache once. roofline steps/s = bandwidth / bytes per step.

Bandwidth is measured in the same run, with as many threads as the engine uses, as the
best of several passes over a buffer much larger than the last-level cache:
- `read`: threads each sum a slice (reads only, what a step does with its weights);
- `torch_read`: torch's (multi-threaded) sum over the same buffer;
- `copy`: threads each copy a slice (counts read + write bytes), for information.
A step only reads (weights, KV), so the limit is the best read-only bandwidth.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from editgen.engine.config import ModelShapes


def measure_bandwidth(*, threads: int, megabytes: int = 1024, repeats: int = 5) -> dict:
    """Bytes/s of large-buffer reads and copies with `threads` threads (numpy releases the
    GIL in sum and copyto). Returns GB/s (1e9 bytes) for each method and the best."""
    n = megabytes * 1024 * 1024 // 4
    # Distinct values on every page: identical pages may be merged by the host (then reads hit cache).
    src = np.arange(n, dtype=np.float32)
    dst = np.empty_like(src)
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)
    slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    def read(s):
        return float(src[s].sum(dtype=np.float32))

    def copy(s):
        np.copyto(dst[s], src[s])

    results = {}
    with ThreadPoolExecutor(threads) as pool:
        for name, fn, factor in (("read", read, 1), ("copy", copy, 2)):
            list(pool.map(fn, slices))  # warm (page faults, caches)
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                list(pool.map(fn, slices))
                best = min(best, time.perf_counter() - start)
            results[f"{name}_gb_s"] = factor * src.nbytes / best / 1e9
    try:
        import torch

        torch.set_num_threads(threads)
        t = torch.from_numpy(src)
        t.sum()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            t.sum()
            best = min(best, time.perf_counter() - start)
        results["torch_read_gb_s"] = src.nbytes / best / 1e9
    except ImportError:
        pass
    results["limit_gb_s"] = max(results["read_gb_s"], results.get("torch_read_gb_s", 0.0))
    results.update(threads=threads, buffer_mb=megabytes, repeats=repeats, method=(
        "best of repeats over a buffer of buffer_mb; read = threaded np.sum, torch_read = torch.sum "
        "with `threads` threads, copy = threaded np.copyto (read+write bytes, not used); "
        "limit = best read-only bandwidth"))
    return results


@dataclasses.dataclass(frozen=True)
class WeightBytes:
    """Decoder weight bytes read by one step (independent of past length)."""

    dense: int  # every linear / norm weight the step reads in full (incl. lm heads)
    gathered_row: int  # bytes of one embedding row (token tables are gathered, not read in full)
    source: str

    def per_step(self, rows: int, codebooks: int) -> int:
        # rows x K code embeddings + 1 position row
        return self.dense + self.gathered_row * (rows * codebooks + 1)


def torch_weight_bytes(model) -> WeightBytes:
    """fp32 bytes of the decoder weights a step reads, from a transformers MusicGen: all
    decoder parameters except the token embeddings (gathered rows only) and the
    cross-attention K/V projections (run once per request, not per step); lm heads included."""
    dec = model.decoder.model.decoder
    skip = {id(e.weight) for e in dec.embed_tokens}
    for layer in dec.layers:
        for lin in (layer.encoder_attn.k_proj, layer.encoder_attn.v_proj):
            skip.update(id(p) for p in lin.parameters())
    dense = sum(p.numel() * p.element_size() for p in model.decoder.parameters() if id(p) not in skip)
    row = dec.embed_tokens[0].weight.shape[1] * dec.embed_tokens[0].weight.element_size()
    return WeightBytes(dense, row, "transformers decoder parameters (fp32)")


def onnx_weight_bytes(path) -> WeightBytes:
    """Bytes of the initializers of a decoder_step graph (int8 weights and their scales
    as stored), except tables that only feed Gather as data (embeddings, positions):
    those count as gathered rows."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    sizes, row_bytes = {}, {}
    for init in graph.initializer:
        count = int(np.prod(init.dims)) if init.dims else 1
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        sizes[init.name] = count * itemsize
        if len(init.dims) >= 2:
            row_bytes[init.name] = int(np.prod(init.dims[1:])) * itemsize
    consumers: dict[str, list[tuple[str, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, i))
    gathered = {n for n in sizes if consumers.get(n) and all(op == "Gather" and i == 0 for op, i in consumers[n])
                and sizes[n] > 1 << 20}
    dense = sum(s for n, s in sizes.items() if n not in gathered)
    row = max((row_bytes.get(n, 0) for n in gathered), default=0)
    return WeightBytes(dense, row, f"ONNX initializers of {path}")


def kv_bytes(shapes: ModelShapes, rows: int, self_len: int, itemsize: int = 4) -> int:
    """KV bytes a step reads: self-attention K and V over `self_len` positions (the
    graph's capacity, as it reads the whole static cache masked) + cross K/V over T."""
    per_pos = shapes.num_layers * 2 * rows * shapes.num_heads * shapes.head_dim * itemsize
    return per_pos * (self_len + shapes.max_text_tokens)


def roofline(bandwidth_gb_s: float, weights: WeightBytes, shapes: ModelShapes, rows: int, self_len: int) -> dict:
    w = weights.per_step(rows, shapes.num_codebooks)
    kv = kv_bytes(shapes, rows, self_len)
    total = w + kv
    return {"weight_bytes": w, "kv_bytes": kv, "bytes_per_step": total,
            "roofline_steps_s": bandwidth_gb_s * 1e9 / total}
