"""Long-form: what a song minutes long costs, and how the chunked codec's seams compare
with one whole decode. JSON (and the windows figure) in --out.

    python -m benchmarks.long_form codec --engine DIR --out docs/bench/long   # seam error, 60 s (~15 min)
    python -m benchmarks.long_form cli --engine DIR --out docs/bench/long     # 30 s then 5 min edit (~1 h)
    python -m benchmarks.long_form cli --quick --out /tmp/long                # random:tiny, 2 s windows: seconds

codec: random codes of a 60 s clip decoded once whole and in chunks of --chunk frames
with each overlap of --overlaps (max sample error against the whole decode); and a
synthesized 60 s clip encoded whole and chunk by chunk (share of equal codes).

cli: `editgen edit --audio` of a synthesized WAV (tones and noise bursts, 32 kHz mono),
short then long, each in its own process, back to back, as a user runs it (ORT with its
default threads: one per core; --no-progress), with `--region` a third of the song. Per
run: wall seconds, real-time factor (wall / audio seconds), peak RSS of the process
(wait4's ru_maxrss) and /proc/loadavg before and after (the machine may be shared: compare
runs whose loads agree). Then the ratios long / short of seconds per audio second and of
peak RSS, and windows.png: the long run's source and edited waveforms with its windows,
seams and region (editgen.cli.plots.plot_long_form).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import loadavg

ROOT = Path(__file__).resolve().parents[1]
PROG = "python -m benchmarks.long_form"
SOURCE, TARGET = "lofi piano with warm drums", "lofi guitar with warm drums"


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("codec", "cli"))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--engine", help="exported engine directory (random:small --quantize int8 for the full run)")
    src.add_argument("--quick", action="store_true", help="random:tiny (torch), short songs and 2 s windows")
    p.add_argument("--seconds", default=None, help="cli: short,long audio seconds (default 30,300; quick 2,8)")
    p.add_argument("--chunk", type=int, default=500, help="codec: chunk frames of the overlap sweep")
    p.add_argument("--overlaps", default="0,2,5,10,25,50", help="codec: overlaps in frames, comma-separated")
    p.add_argument("--out", required=True, help="output directory")
    args = p.parse_args(argv)
    if args.engine and not (Path(args.engine) / "manifest.json").is_file():
        p.error(f"--engine {args.engine} is not an `editgen export` directory (no manifest.json)")
    try:
        args.seconds = [float(x) for x in (args.seconds or ("2,8" if args.quick else "30,300")).split(",")]
        args.overlaps = [int(x) for x in args.overlaps.split(",")]
    except ValueError:
        p.error("--seconds and --overlaps take numbers separated by commas, e.g. 30,300")
    if len(args.seconds) != 2 or not 0 < args.seconds[0] < args.seconds[1]:
        p.error(f"--seconds must be short,long with 0 < short < long, got {args.seconds}")
    out = Path(args.out)
    if out.exists() and not out.is_dir() or not out.parent.is_dir():
        p.error(f"--out {out}: give a directory whose parent exists")
    return args


def synthesized(seconds: float, rate: int = 32000, seed: int = 0) -> np.ndarray:
    """float32 [samples]: a chord every 2 s (three tones and their octaves) and noise bursts
    on the beat: audio with structure, not silence or white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    roots = 110 * 2 ** (rng.integers(0, 12, size=int(seconds // 2) + 1) / 12)
    f = roots[(t // 2).astype(int)]
    wav = sum(np.sin(2 * np.pi * f * r * t) / (1 + i) for i, r in enumerate((1, 1.25, 1.5, 2, 3)))
    beat = np.exp(-30 * (t % 0.5)) * rng.standard_normal(t.size)
    return (0.15 * wav + 0.2 * beat).astype(np.float32)


# -- codec ---------------------------------------------------------------------------------


def codec_part(args) -> dict:
    from editgen.engine.codec_chunks import CodecChunks, decode, encode
    from editgen.engine.runtime import open_backend

    frames = 30 * 50 if args.quick else 60 * 50
    with open_backend(**_backend_args(args)) as backend:
        codes = np.random.default_rng(0).integers(0, backend.shapes.vocab_size, (backend.shapes.num_codebooks, frames))
        start = time.perf_counter()
        whole = backend.decode_audio(codes[None])[0]  # [channels, samples]
        whole_s = time.perf_counter() - start
        rows = []
        for overlap in args.overlaps:  # clip a multiple of the chunk: every chunk's input is long enough
            start = time.perf_counter()
            chunked = decode(backend, codes, CodecChunks(chunk=args.chunk, overlap=overlap))
            rows.append({"overlap_frames": overlap, "max_abs_error": float(np.abs(chunked - whole).max()),
                         "seconds": time.perf_counter() - start})
            print(f"overlap {overlap:3d} frames: max |chunked - whole| = {rows[-1]['max_abs_error']:.3g}", flush=True)
        default = CodecChunks()
        start = time.perf_counter()
        at_default = decode(backend, codes, default)
        default_row = {"chunk_frames": default.chunk, "overlap_frames": default.overlap,
                       "max_abs_error": float(np.abs(at_default - whole).max()), "seconds": time.perf_counter() - start}
        wav = synthesized(frames / 50)[None]
        enc_whole = backend.encode_audio(wav)
        enc_chunked = encode(backend, wav, CodecChunks(chunk=args.chunk))
    return {"clip_seconds": frames / 50, "whole_decode_seconds": whole_s, "peak_abs": float(np.abs(whole).max()),
            "chunk_frames": args.chunk, "sweep": rows, "default": default_row,
            "encode_equal_codes": float(np.mean(enc_whole == enc_chunked)), "encode_chunk_frames": args.chunk}


# -- cli -----------------------------------------------------------------------------------


def cli_run(args, wav_path: Path, seconds: float, out: Path) -> dict:
    """One `editgen edit --audio` in its own process: wall, RTF, peak RSS, loads."""
    region = f"{seconds / 3:g}:{2 * seconds / 3:g}"
    model = ["--model", "random:tiny", "--window-seconds", "2", "--context-seconds", "0.6"] if args.quick \
        else ["--engine", args.engine]
    argv = [sys.executable, "-m", "editgen.cli", "edit", *model, "--audio", str(wav_path), "--source", SOURCE,
            "--target", TARGET, "--region", region, "--no-progress", "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    load_before = loadavg()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"{PROG}: the edit of {seconds:g} s failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    meta = json.loads((out / "edit.json").read_text())
    row = {"audio_seconds": seconds, "wall_s": wall, "rtf": wall / seconds, "s_per_audio_s": wall / seconds,
           "peak_rss_mb": usage.ru_maxrss / 1024, "loadavg_before": load_before,
           "loadavg_after": loadavg(), "windows": len(meta["long_form_windows"]),
           "region": region, "stdout": stdout.strip()}
    print(json.dumps(row), flush=True)
    return row


def cli_part(args, out: Path) -> dict:
    import soundfile as sf

    runs = []
    for seconds in args.seconds:
        wav_path = out / f"song_{seconds:g}s.wav"
        sf.write(wav_path, synthesized(seconds), 32000, subtype="PCM_16")
        runs.append(cli_run(args, wav_path, seconds, out / f"run_{seconds:g}s"))
        wav_path.unlink()
    short, long = runs
    result = {"engine": args.engine or "random:tiny (torch)", "runs": runs,
              "cost_per_audio_second_ratio": long["s_per_audio_s"] / short["s_per_audio_s"],
              "peak_rss_ratio": long["peak_rss_mb"] / short["peak_rss_mb"]}
    figure(out / f"run_{args.seconds[1]:g}s", out / "windows.png")
    return result


def figure(run: Path, png: Path) -> None:
    import soundfile as sf

    from editgen.cli.plots import plot_long_form

    meta = json.loads((run / "edit.json").read_text())
    source, rate = sf.read(run / "source.wav", dtype="float32")
    edited, _ = sf.read(run / "edited.wav", dtype="float32")
    o = meta["options"]
    plot_long_form(png, {"source": source, "edited": edited, "edited - source": edited - source}, rate,
                   meta["long_form_windows"], region=meta["region"],
                   title=f"A {len(source) / rate:.0f} s real-audio edit in {len(meta['long_form_windows'])} windows "
                         f"(W = {o['window_seconds']:g} s, C = {o['context_seconds']:g} s), region "
                         f"{meta['region'][0]:g}-{meta['region'][1]:g} s")


def _backend_args(args) -> dict:
    return {"model": "random:tiny"} if args.quick else {"engine": args.engine}


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    if args.part == "codec":
        result = codec_part(args)
    else:
        result = cli_part(args, out)
    path = out / f"{args.part}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
