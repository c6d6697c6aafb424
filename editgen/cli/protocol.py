"""`editgen protocol`: the paper's evaluation in one command.

    editgen protocol --model DIR [--settings editgen-code,paper-text,hard] [--pairs N | --pair-ids ID ...]
                     [--seconds 10] [--seed 0] [--seeds 1] [--clap DIR] -o OUTDIR

Every pair of the shipped set (editgen/eval/data/protocol_pairs.json: instrument, genre
and mood swaps, refine additions, reweights; 45 pairs written for this project) is
edited under every named setting, scored by the code of `editgen eval --batch` (melody,
dynamics, rhythm F1; CLAP text-to-audio and audio-to-audio with --clap), and reported
in the layout of the paper's Table 1: one row per setting, mean ± 95% CI per metric.

One paired edit per (pair, seed) carries one target row per setting: the source row is
never edited, so it is the same for every setting and is generated (and written) once;
every target row draws from the same seeded stream, so each setting's edit is exactly
what `editgen edit --setting S` gives for that seed (tests pin this).

Defaults follow the paper's released evaluation code: clips of 10 s (it decodes 512
steps, 10.2 s), guidance 3, top-k 250 sampling. It ran 5 seeds per pair; `--seeds 1`
is the default here to keep a CPU run near an hour (`--seeds 5` matches it). Its CLAP
text score compares the edit with the *source* prompt; here it is each pair's target
prompt (the edit's aim).

OUTDIR (written atomically: a failure leaves nothing): table.txt, table.png, eval.json
(the `editgen eval --batch` report), protocol.json (settings, model, seeds, pairs, files,
summaries by setting and by op), pairs.csv (`editgen eval --batch` input), and
audio/<pair>/seed-<k>/{source,<setting>}.wav. On random weights the numbers mean
nothing and every output says so."""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
from pathlib import Path

from editgen.cli.common import add_generation_args, add_model_args, add_parser, generation_options, note, open_from_args
from editgen.cli.outputs import atomic_dir, check_writable_dir
from editgen.engine.edit.settings import REWEIGHT_MODES, SETTINGS
from editgen.errors import InvalidRequestError

DEFAULT_SETTINGS = ("editgen-code", "paper-text", "hard")
DEFAULT_SECONDS = 10.0
RANDOM_NOTE = ("random weights: these numbers mean nothing about the method; "
               "run with a real checkpoint directory to reproduce the paper")
CSV_COLUMNS = ("source", "edited", "target_prompt", "label")


def register(sub) -> None:
    p = add_parser(sub, "protocol", help="run the paper's evaluation: the shipped prompt pairs under each "
                                         "setting, scored, as the paper's Table 1",
                   description="Edit every shipped prompt pair under each named setting, score the edits as "
                               "`editgen eval --batch` does and write the paper's Table 1 layout (table.txt, "
                               "table.png), eval.json, protocol.json, pairs.csv and the audio into one directory. "
                               "Defaults follow the paper's released evaluation code: 10 s clips, guidance 3, "
                               "top-k 250. On random weights the numbers mean nothing.")
    add_model_args(p)
    p.add_argument("--settings", default=",".join(DEFAULT_SETTINGS),
                   help=f"comma-separated named settings, one table row each ({', '.join(SETTINGS)})")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--pairs", type=int, metavar="N",
                       help="the first N pairs, categories taken in turn (default: all)")
    which.add_argument("--pair-ids", nargs="+", metavar="ID", help="these pairs (ids from protocol_pairs.json)")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="seeds per pair: --seed, --seed + 1, ... (the released code ran 5)")
    p.add_argument("--reweight-mode", default="p2p", choices=REWEIGHT_MODES,
                   help="how reweight pairs scale a word (see `editgen edit --help`)")
    p.add_argument("--clap", type=Path, metavar="DIR",
                   help="local CLAP checkpoint directory: adds the CLAP text and audio columns")
    add_generation_args(p)
    p.set_defaults(seconds=DEFAULT_SECONDS)
    p.add_argument("-o", "--output", required=True, help="output directory")
    p.set_defaults(func=run)


@dataclasses.dataclass(frozen=True)
class Edit:
    """One row of pairs.csv: a pair's edit under a setting, paths relative to OUTDIR."""

    pair: object  # editgen.eval.protocol.ProtocolPair
    seed: int
    setting: str
    source: str
    edited: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """What one run does, checked before the model loads."""

    pairs: tuple  # ProtocolPair, in run order
    settings: tuple[str, ...]
    seeds: tuple[int, ...]
    options: object  # GenerationOptions; its seed is replaced by each of `seeds`
    reweight_mode: str


def parse_settings(text: str) -> tuple[str, ...]:
    from editgen.engine.edit.settings import setting_named

    names = [t.strip() for t in text.split(",")]
    if not all(names):
        raise InvalidRequestError(f"--settings {text!r}: give names separated by commas, e.g. editgen-code,hard")
    out = tuple(setting_named(n).name for n in names)
    if len(set(out)) != len(out):
        raise InvalidRequestError(f"--settings {text!r} names a setting twice")
    return out


def plan_from_args(args) -> Plan:
    from editgen.eval.protocol import load_pairs, select_pairs

    settings = parse_settings(args.settings)
    if args.seeds < 1:
        raise InvalidRequestError(f"--seeds {args.seeds}: give at least 1")
    ids = None if args.pair_ids is None else [i for item in args.pair_ids for i in item.split(",") if i]
    pairs = select_pairs(load_pairs(), count=args.pairs, ids=ids)
    for pair in pairs:  # reweight mode editgen-code rejects c = 0: fail now, not at pair 30
        for s in settings:
            pair.spec(s, args.reweight_mode)
    return Plan(pairs=pairs, settings=settings, seeds=tuple(range(args.seed, args.seed + args.seeds)),
                options=generation_options(args), reweight_mode=args.reweight_mode)


def run(args) -> int:
    from editgen.cli.eval import open_scorer
    from editgen.eval.protocol import check_tokenizer

    # Everything cheap is checked before the model loads.
    out = check_writable_dir(args.output)
    plan = plan_from_args(args)
    scorer = open_scorer(args.clap)  # the eval extra, and a broken --clap, fail in seconds

    with open_from_args(args) as backend:
        check_tokenizer(plan.pairs, backend.tokenizer, backend.shapes.num_layers)
        frames = plan.options.frames(backend.shapes)  # the duration, checked before any edit
        is_random = getattr(backend, "is_random", False) or (args.model or "").startswith("random:")
        if is_random:
            note(RANDOM_NOTE)
        run_info = {"model": args.model, "engine": args.engine, "backend": args.backend, "random": is_random,
                    "frames": frames, "sample_rate": backend.shapes.sample_rate}
        with atomic_dir(out) as tmp:
            edits = _run_edits(backend, tmp, plan, progress=not args.no_progress)
            _write_csv(tmp / "pairs.csv", edits)
            scored = _score(tmp, scorer, progress=not args.no_progress)
            text, files = _write_reports(tmp, plan, edits, scored, run_info)
    print(text, end="")  # its notes included: they are not repeated on stderr
    print(f"wrote {out}/{{{','.join(files)}}} ({len(edits)} edits)")
    return 0


def _run_edits(backend, tmp: Path, plan: Plan, *, progress: bool) -> list[Edit]:
    """One paired edit per (pair, seed), one target row per setting; writes the audio."""
    import numpy as np

    from editgen.engine.audio import write_wav
    from editgen.engine.jobs import edit
    from editgen.engine.progress import progress_bar

    rate = backend.shapes.sample_rate
    edits: list[Edit] = []
    total = len(plan.pairs) * len(plan.seeds) * len(plan.settings)
    with progress_bar(total, enabled=progress, desc="protocol", unit="edit") as bar:
        for pair in plan.pairs:
            specs = [pair.spec(s, plan.reweight_mode) for s in plan.settings]
            for seed in plan.seeds:
                result = edit(backend, specs, dataclasses.replace(plan.options, seed=seed), progress=False)
                codes = np.concatenate([result.source_codes[None], result.edited_codes])  # [1 + settings, K, frames]
                # One clip per decode, as `editgen edit`: the codec's matmuls round differently
                # per batch size, and the files should be bit-identical to that command's.
                wavs = [backend.decode_audio(c[None])[0] for c in codes]  # each [channels, samples]
                folder = Path("audio") / pair.id / f"seed-{seed}"
                (tmp / folder).mkdir(parents=True)
                write_wav(tmp / folder / "source.wav", wavs[0], rate)
                for setting, wav in zip(plan.settings, wavs[1:]):
                    write_wav(tmp / folder / f"{setting}.wav", wav, rate)
                    edits.append(Edit(pair, seed, setting, str(folder / "source.wav"), str(folder / f"{setting}.wav")))
                bar.update(len(plan.settings))
    return edits


def _write_csv(path: Path, edits: list[Edit]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for e in edits:
            writer.writerow([e.source, e.edited, e.pair.target_prompt, e.setting])


def _score(tmp: Path, scorer, *, progress: bool):
    """Scores pairs.csv exactly as `editgen eval --batch OUTDIR/pairs.csv` would (read back
    through its reader), then makes paths relative to OUTDIR: the temporary directory's
    name must not outlive it in eval.json."""
    from editgen.cli.eval import Scored, read_pairs_csv, score_pairs

    scored = score_pairs(read_pairs_csv(tmp / "pairs.csv"), scorer, batch=True, progress=progress)
    prefix = f"{tmp}{os.sep}"
    results = tuple(dataclasses.replace(r, source=r.source.removeprefix(prefix), edited=r.edited.removeprefix(prefix),
                                        notes=tuple(n.replace(prefix, "") for n in r.notes))
                    for r in scored.results)
    return Scored(results, tuple(n.replace(prefix, "") for n in scored.notes), scored.settings, scored.batch)


def _collapsed_notes(scored) -> list[str]:
    """The eval notes once each, with how many edits they concern (eval.json keeps each
    edit's own): 135 lines of "rhythm F1 not available" would bury the table."""
    counts = collections.Counter(n for r in scored.results for n in r.notes)
    general = [n for n in scored.notes if not n.startswith("pair ")]
    return general + [f"{k} of {len(scored.results)} edits: {text}" for text, k in counts.items()]


def _write_reports(tmp: Path, plan: Plan, edits: list[Edit], scored, info: dict) -> tuple[str, list[str]]:
    """table.txt, table.png, eval.json, protocol.json; returns the text of table.txt and
    the names in OUTDIR."""
    from editgen.eval import report
    from editgen.version import __version__

    results, settings = scored.results, plan.settings
    groups = report.group_summaries(results)
    # The released code also reports each edit op apart (Replace, Refine, Reweight).
    by_op = [dataclasses.replace(r, label=f"{e.setting} / {e.pair.op}") for e, r in zip(edits, results)]
    ops = dict.fromkeys(p.op for p in plan.pairs)
    op_labels = [f"{s} / {op}" for s in settings for op in ops]
    op_groups = report.group_summaries(by_op)
    notes = _collapsed_notes(scored)
    seeds = len(plan.seeds)
    title = (f"EditGen protocol: {len(plan.pairs)} pairs x {seeds} seed{'s' * (seeds > 1)}, "
             f"{plan.options.seconds:g} s clips, {info['model'] or info['engine']}")
    text = "\n".join([
        title, *(["NOTE: " + RANDOM_NOTE] if info["random"] else []), "",
        report.format_methods_table(results, groups, settings), "",
        "By edit op:",
        report.format_methods_table(by_op, op_groups, op_labels, label_title="setting / op"), "",
        "Cells: mean ± 95% CI half-width (Student t) over the n edits of a row; n/a: undefined for "
        "every edit; (n=k): defined for k of them (eval.json has each edit's scores and notes).",
        *notes,
    ]) + "\n"
    (tmp / "table.txt").write_text(text, encoding="utf-8")
    files = ["table.txt", "eval.json", "protocol.json", "pairs.csv", "audio/"]
    if _plot(tmp / "table.png", results, groups, settings, title, info["random"]):
        files.insert(1, "table.png")
    (tmp / "eval.json").write_text(json.dumps(scored.to_json(), indent=2, allow_nan=False) + "\n")
    doc = {
        "editgen_version": __version__,
        "model": info["model"], "engine": info["engine"], "backend": info["backend"],
        "settings": [dataclasses.asdict(SETTINGS[s]) for s in settings],
        "reweight_mode": plan.reweight_mode,
        "seeds": list(plan.seeds), "seconds": plan.options.seconds, "frames": info["frames"],
        "sample_rate": info["sample_rate"],
        "options": {k: v for k, v in dataclasses.asdict(plan.options).items() if k != "seed"},
        "clap": scored.settings["clap"],
        "pair_ids": [p.id for p in plan.pairs],
        "pairs": [{**p.to_json(), "audio": _audio_of(p.id, edits)} for p in plan.pairs],
        "summary": {label: {f: (s.to_json() if s else None) for f, s in groups[label].items()} for label in settings},
        "summary_by_op": {label: {f: (s.to_json() if s else None) for f, s in op_groups[label].items()}
                          for label in op_labels},
        "notes": ([RANDOM_NOTE] if info["random"] else []) + notes,
        "files": files,
    }
    (tmp / "protocol.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    return text, files


def _audio_of(pair_id: str, edits: list[Edit]) -> dict:
    """{"seed-0": {"source": path, setting: path, ...}, ...} of one pair."""
    out: dict[str, dict[str, str]] = {}
    for e in edits:
        if e.pair.id == pair_id:
            out.setdefault(f"seed-{e.seed}", {"source": e.source})[e.setting] = e.edited
    return out


def _plot(path: Path, results, groups, settings, title: str, is_random: bool) -> bool:
    from editgen.engine.plots import matplotlib_available
    from editgen.eval import report
    from editgen.eval.figure import plot_methods

    if not matplotlib_available():
        note("no table.png: matplotlib is not installed (pip install 'editgen[cli]')")
        return False
    plot_methods(path, groups, settings, report.table1_columns(results),
                 report.methods_cells(results, groups, settings), title=title,
                 warning=RANDOM_NOTE if is_random else None)
    return True
