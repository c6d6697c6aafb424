"""How the shipped preset tokenizer (`editgen/engine/data/preset_tokenizer.json`) is made.

    python -m editgen.model.tokenizer_build     # retrain and rewrite the file

Only run this on purpose: the runtime loads the file and never trains, so token ids do
not depend on the installed `tokenizers` version. tests/test_tokenizer.py checks that
the file matches what this builder trains with the pinned `tokenizers`."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from editgen.engine.tokenizer import EOS, PAD, PRESET_TOKENIZER_FILE, UNK

PRESET_VOCAB_SIZE = 600
CORPUS = Path(__file__).parents[1] / "engine" / "data" / "preset_corpus.txt"
# Characters the preset knows even if the corpus lacks them (others become <unk>).
ALPHABET = list("abcdefghijklmnopqrstuvwxyz0123456789▁,.-'&!?:;()/\"+#%")


def train_preset_tokenizer() -> Tokenizer:
    """Sentencepiece-style BPE (Metaspace `▁` word prefix), lower-casing, `</s>` appended,
    trained on `data/preset_corpus.txt`: how `data/preset_tokenizer.json` was made.

    The BPE trainer is deterministic (merges are ranked by count, then by pair id; checked
    across hash seeds and thread counts), but another `tokenizers` version may train other
    merges: the runtime never trains, it loads the shipped file.
    """
    lines = [ln for ln in CORPUS.read_text(encoding="utf-8").splitlines()
             if ln.strip() and not ln.startswith("#")]
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.Lowercase(),
        normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=PRESET_VOCAB_SIZE, special_tokens=[PAD, EOS, UNK],
        initial_alphabet=ALPHABET, show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}",
        special_tokens=[(EOS, tok.token_to_id(EOS))],
    )
    return tok


def write_preset_tokenizer(path: str | Path = PRESET_TOKENIZER_FILE) -> Path:
    """Train the preset tokenizer and write it (pretty JSON, so diffs are readable)."""
    path = Path(path)
    train_preset_tokenizer().save(str(path), pretty=True)
    return path


if __name__ == "__main__":
    print(f"wrote {write_preset_tokenizer()}")
