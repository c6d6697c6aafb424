"""EnCodec's decoder with an int8 LSTM, for the CPU engine of `--quantize int8`.

The decoder is conv -> LSTM (+ skip) -> upsampling convs. Measured on random:small
(docs/benchmarks.md, "EnCodec decode"), its LSTM is ~40% of a decode: every frame reads
the whole recurrent matrix (16 MB per layer in fp32). So the int8 export also writes the
decoder cut around its LSTM:

    encodec_decode_head.onnx   codes [clips, K, frames] -> x [clips, channels, dim, frames]
                               (codebook embeddings, the first conv; per channel)
    int8_codec.npz             the LSTM's weights in int8 (editgen.kernels.cpu_lstm), run by
                               cpu/int8_lstm.cc: y = LSTM(x) + x
    encodec_decode_tail.onnx   y -> audio [clips, channels, samples] (the rest, per channel)

The whole encodec_decode.onnx stays (the standard path, and the reference);
manifest["int8_codec"] records the graphs, the file and the agreement of the int8 decode
with it (SNR and max error of the audio of random codes).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from editgen.engine.config import ModelShapes
from editgen.export.graphs import GraphDef
from editgen.export.int8_rowwise import METHOD_NOTE, quantize_weight
from editgen.export.onnx_export import export_graph

FILE = "int8_codec.npz"
AGREEMENT_CLIPS, AGREEMENT_FRAMES = 2, 250


class CodecHead(nn.Module):
    """codes [clips, K, frames] -> the LSTM's input [clips, channels, dim, frames]."""

    def __init__(self, model):
        super().__init__()
        self.codec = model.audio_encoder
        self.channels = model.config.decoder.audio_channels

    def forward(self, codes):
        per_channel = []
        for c in range(self.channels):
            emb = self.codec.quantizer.decode(codes[:, c::self.channels].transpose(0, 1))
            per_channel.append(self.codec.decoder.layers[0](emb))
        return torch.stack(per_channel, dim=1)


class CodecTail(nn.Module):
    """The LSTM's output [clips, channels, dim, frames] -> audio [clips, channels, samples]."""

    def __init__(self, model):
        super().__init__()
        self.codec = model.audio_encoder
        self.channels = model.config.decoder.audio_channels

    def forward(self, x):
        out = []
        for c in range(self.channels):
            h = x[:, c]
            for layer in self.codec.decoder.layers[2:]:
                h = layer(h)
            out.append(h[:, 0])
        return torch.stack(out, dim=1)


def codec_lstm(model) -> nn.LSTM:
    lstm = model.audio_encoder.decoder.layers[1]
    if type(lstm).__name__ != "EncodecLSTM":
        raise ValueError(f"the int8 codec takes EnCodec's decoder with its LSTM second, not {type(lstm).__name__}")
    return lstm.lstm


def lstm_arrays(model) -> dict[str, np.ndarray]:
    """The arrays of int8_codec.npz (names: editgen.kernels.cpu_lstm.lstm_names)."""
    lstm = codec_lstm(model)
    arrays = {}
    for l in range(lstm.num_layers):
        for name in ("ih", "hh"):
            w = getattr(lstm, f"weight_{name}_l{l}").detach().float().numpy()  # [4 dim, dim]
            arrays[f"lstm.{l}.w_{name}.w"], arrays[f"lstm.{l}.w_{name}.scale"] = quantize_weight(w.T)
        bias = getattr(lstm, f"bias_ih_l{l}") + getattr(lstm, f"bias_hh_l{l}")
        arrays[f"lstm.{l}.bias"] = bias.detach().float().numpy()
    return arrays


def graph_defs(model, shapes: ModelShapes) -> list[GraphDef]:
    K, dim = shapes.num_codebooks, codec_lstm(model).hidden_size
    gen = torch.Generator().manual_seed(0)

    def head_examples():
        return [(torch.randint(0, shapes.vocab_size, (n, K, f), generator=gen),) for n, f in ((2, 12), (1, 5))]

    def tail_examples():
        C = shapes.audio_channels
        return [(torch.randn(n, C, dim, f, generator=gen),) for n, f in ((2, 12), (1, 5))]

    return [GraphDef("encodec_decode_head", CodecHead(model).eval(), ("codes",), ("x",),
                     {"codes": {0: "clips", 2: "frames"}, "x": {0: "clips", 3: "frames"}}, head_examples,
                     dtype_follows_export=False),
            GraphDef("encodec_decode_tail", CodecTail(model).eval(), ("x",), ("audio",),
                     {"x": {0: "clips", 3: "frames"}, "audio": {0: "clips", 2: "samples"}}, tail_examples,
                     dtype_follows_export=False)]


def export_int8_codec(model, shapes: ModelShapes, out: Path, log: Callable[[str], None] = print) -> dict:
    """Write the head and tail graphs and int8_codec.npz into `out`; returns
    manifest["int8_codec"] without its agreement (`codec_agreement` adds it)."""
    start = time.perf_counter()
    entries = []
    for gd in graph_defs(model, shapes):
        entry = export_graph(gd, out, "fp32")
        entry["name"] = gd.name
        entries.append(entry)
    arrays = lstm_arrays(model)
    np.savez(out / FILE, **arrays)
    log(f"  int8 codec      int8  head/tail graphs, {FILE}: LSTM of {len(arrays) // 5} layers "
        f"({time.perf_counter() - start:.1f} s)")
    return {"file": FILE, "weights": METHOD_NOTE, "graphs": entries}


def codec_agreement(out: Path) -> dict:
    """The int8 decode (head, int8 LSTM, tail) against the whole fp32 encodec_decode.onnx on
    random codes: SNR (dB) and max abs error of the audio; {"skipped": why} where the CPU
    kernels cannot be built here."""
    from editgen.engine.backends.int8_codec import Int8Codec
    from editgen.engine.backends.ort_sessions import OrtSessions
    from editgen.kernels.cpu_library import build_error

    why = build_error()
    if why is not None:
        return {"skipped": why}
    sessions = OrtSessions(out, providers=["CPUExecutionProvider"])
    s = sessions.shapes
    codes = np.random.default_rng(0).integers(0, s.vocab_size, (AGREEMENT_CLIPS, s.num_codebooks, AGREEMENT_FRAMES))
    ref = sessions.decode_audio(codes).astype(np.float64)
    test = Int8Codec(sessions, threads=None).decode_audio(codes).astype(np.float64)
    sessions.close()
    return {"clips": AGREEMENT_CLIPS, "frames": AGREEMENT_FRAMES,
            "snr_db": float(10 * np.log10((ref ** 2).sum() / max(((ref - test) ** 2).sum(), 1e-300))),
            "max_abs_error": float(np.abs(ref - test).max()), "rms": float(np.sqrt((ref ** 2).mean()))}


def codec_line(entry: dict) -> str:
    """What `editgen export` says about the int8 codec (manifest["int8_codec"])."""
    from editgen.engine.backends.int8_codec import MIN_SNR_DB

    a = entry.get("agreement", {})
    if "skipped" in a:
        return f"int8 codec (EnCodec's LSTM in int8): not measured ({a['skipped']}): the engine decodes in fp32"
    used = "the CPU engine decodes with it" if a["snr_db"] >= MIN_SNR_DB else f"under {MIN_SNR_DB:g} dB: not used"
    return (f"int8 codec (EnCodec's LSTM in int8): audio SNR {a['snr_db']:.1f} dB against the fp32 decode, "
            f"max abs error {a['max_abs_error']:.2g}; {used}")
