"""One-line notes on what the engine will quietly do with a request (the CLI prints them
as `editgen: note:`, the server returns them in `notes`)."""

from __future__ import annotations

from editgen.engine.options import GenerationOptions


def request_notes(backend, options: GenerationOptions, prompts: dict[str, str], *,
                  top_k_name: str = "--top-k") -> list[str]:
    """`top_k` above the vocabulary samples from every code, and words the tokenizer does
    not know become <unk> (a prompt of emoji or CJK text with the preset tokenizer is all
    <unk>)."""
    notes = []
    vocab = backend.shapes.vocab_size
    if not options.greedy and options.top_k > vocab:
        notes.append(f"{top_k_name} {options.top_k} is above the {vocab} codes of each codebook: "
                     f"sampling from all {vocab}")
    for name, prompt in prompts.items():
        unknown = backend.tokenizer.unknown_words(prompt)
        if unknown:
            what = "every word" if len(unknown) == len(prompt.split()) else ", ".join(repr(w) for w in unknown)
            notes.append(f"{name} {prompt!r}: the tokenizer does not know {what} (encoded as <unk>): "
                         "the model hears no description there")
    return notes


def region_note(region, frames: int, frame_rate: int) -> str | None:
    seconds = frames / frame_rate
    if region is not None and region.end > seconds and region.start < seconds:
        return (f"region {region.start:g}:{region.end:g} ends after the audio ({seconds:.2f} s): "
                f"edited from {region.start:g} s to the end")
    return None


def rerun_note(specs) -> str | None:
    """Captured mode with self-attention injection runs the source row again (jobs.reruns_source)."""
    from editgen.engine.jobs import reruns_source

    if reruns_source(specs):
        return ("self-attention injection needs the source's self-attention, which a capture does not store: "
                "the source row runs again, teacher-forced on the captured codes")
    return None
