"""Our decoder step, generation loop and codec against transformers' own MusicGen (fp32,
eager), mono and stereo (random:tiny-stereo: 8 codebooks, left/right interleaved)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editgen.engine.edit import EditBatch
from editgen.engine.generate import generate_codes
from editgen.engine.options import GenerationOptions
from tests.conftest import loaded_model, torch_backend

CONFIGS = ["random:tiny", "random:tiny2", "random:tiny-stereo"]  # tiny2: other layers / heads / hidden
PROMPTS = ["lofi piano with warm drums", "80s pop track with bassy drums and synth"]


@pytest.mark.parametrize("spec", CONFIGS)
def test_step_logits_match_transformers_forward(spec):
    """Step by step with our static cache vs one full forward of transformers (same
    cache state at every position): logits within 1e-4, for cond and null rows."""
    loaded, backend = loaded_model(spec), torch_backend(spec)
    shapes = backend.shapes
    toks = [backend.tokenizer.encode(p) for p in PROMPTS]
    n, steps, K = len(toks), 10, shapes.num_codebooks
    rng = np.random.default_rng(0)
    seq = rng.integers(0, shapes.vocab_size, size=(2 * n, K, steps))
    seq[:, :, 0] = shapes.pad_token_id
    seq[n:] = seq[:n]

    # transformers: unpadded text (longest prompt), CFG rows as its generate builds them.
    longest = max(t.length for t in toks)
    ids = torch.tensor(np.stack([t.ids[:longest] for t in toks]))
    mask = torch.tensor(np.stack([t.mask[:longest] for t in toks]))
    with torch.no_grad():
        hidden = loaded.model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        ref = loaded.model(
            encoder_outputs=(torch.cat([hidden, torch.zeros_like(hidden)]),),
            attention_mask=torch.cat([mask, torch.zeros_like(mask)]),
            decoder_input_ids=torch.tensor(seq).reshape(-1, steps),
        ).logits.reshape(2 * n, K, steps, -1).numpy()

    # ours: text padded to T, one step at a time through the backend's slot pool.
    from editgen.engine.contract import StepBatch

    pids = np.stack([t.ids for t in toks])
    pmask = np.stack([t.mask for t in toks])
    h = backend.encode_text(pids, pmask)
    rows = 2 * n
    slots = np.arange(rows)
    backend.open(rows)
    edits = EditBatch.plain(rows_cond=n, cfg=True, shapes=shapes)
    backend.admit(slots, np.concatenate([h, np.zeros_like(h)]), np.concatenate([pmask, np.zeros_like(pmask)]),
                  edits.row_inputs)
    for t in range(steps):
        batch = StepBatch(slots=slots, positions=np.full(rows, t), codes=np.ascontiguousarray(seq[:, :, t]),
                          edit=edits.step_edits(t, steps), want_maps=np.zeros(rows, bool))
        out = backend.step(batch)
        np.testing.assert_allclose(out.logits, ref[:, :, t], atol=1e-4, rtol=0)


def transformers_generate(loaded, tok, steps: int, **kwargs):
    """transformers' greedy generate with guidance 3.0 of prompt `tok`; returns its audio
    [1, channels, samples] and the codes it handed EnCodec, channels interleaved back as
    ours: [1, K, frames] (it decodes codebooks 0, 2, .. and 1, 3, .. in separate calls)."""
    captured = []  # [1, 1, K / channels, frames], once per channel
    decode = loaded.model.audio_encoder.decode

    def spy(codes, *args, **kw):
        captured.append(codes.clone())
        return decode(codes, *args, **kw)

    loaded.model.audio_encoder.decode = spy
    try:
        with torch.no_grad():
            audio = loaded.model.generate(
                input_ids=torch.tensor(tok.ids[None, : tok.length]),
                attention_mask=torch.tensor(tok.mask[None, : tok.length]),
                do_sample=False, guidance_scale=3.0, max_new_tokens=steps, **kwargs,
            ).numpy()
    finally:
        loaded.model.audio_encoder.decode = decode
    assert len(captured) == loaded.shapes.audio_channels
    return audio, torch.stack([c[0] for c in captured], dim=2).flatten(1, 2).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("spec", CONFIGS)
def test_greedy_codes_and_audio_match_transformers_generate(spec):
    """Greedy with guidance 3.0: identical codes to MusicgenForConditionalGeneration.generate
    over 60 steps, and our decoded audio [1, channels, samples] equal to what its generate
    returns within 1e-5 (stereo: it decodes codebooks 0, 2, .. and 1, 3, .. separately)."""
    loaded, backend = loaded_model(spec), torch_backend(spec)
    shapes = backend.shapes
    steps = 60  # >= 50 decoder steps
    frames = steps - shapes.channel_codebooks + 1
    options = GenerationOptions(seconds=frames / shapes.frame_rate, guidance_scale=3.0, greedy=True)
    tok = backend.tokenizer.encode(PROMPTS[0])
    ours = generate_codes(backend, [tok], options, progress=False).codes
    wav = backend.decode_audio(ours)
    audio, theirs = transformers_generate(loaded, tok, steps)
    assert theirs.shape == ours.shape == (1, shapes.num_codebooks, frames)
    np.testing.assert_array_equal(ours, theirs)
    assert wav.shape == audio.shape == (1, shapes.audio_channels, frames * shapes.sample_rate // shapes.frame_rate)
    np.testing.assert_allclose(wav, audio, atol=1e-5, rtol=0)


def test_stereo_encode_matches_transformers_audio_prompt():
    """transformers' generate encodes a stereo audio prompt per channel and interleaves
    the codes; the prompt's frames come back first in its output codes. Ours equal them."""
    spec = "random:tiny-stereo"
    loaded, backend = loaded_model(spec), torch_backend(spec)
    codes = np.random.default_rng(0).integers(0, backend.shapes.vocab_size, size=(1, 8, 10))
    wav = backend.decode_audio(codes)[0]  # [2, samples]
    ours = backend.encode_audio(wav)  # [8, 10]
    tok = backend.tokenizer.encode(PROMPTS[0])
    _, theirs = transformers_generate(loaded, tok, 5, input_values=torch.tensor(wav[None]))
    np.testing.assert_array_equal(ours, theirs[0, :, : ours.shape[1]])  # [8, frames]
