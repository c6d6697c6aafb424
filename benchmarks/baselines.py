"""transformers baselines: plain `MusicgenForConditionalGeneration.generate` (eager
attention, sampling, top-k 250, guidance 3) and a Prompt-to-Prompt edit done the obvious
way in transformers: source and target rows batched in one `generate`, eager attention,
and a patched attention function on the decoder's cross-attention (`encoder_attn`)
modules that replaces each target row's probabilities by the source's mapped through an
identity mapper (P2P "replace").

Steady-state step time at past length P: the model's forward (as `generate` calls it,
one new frame, EncoderDecoderCache) on a DynamicCache whose self-attention K/V were set
to P positions (filled with random values), followed by what `generate` does with
the logits (CFG, top-k 250, softmax, multinomial). A burst of N steps grows the cache to
P + N as transformers does (torch.cat); the cache is cropped back to P between repeats.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import GUIDANCE, SOURCE, TOP_K, plain_prompts, targets

P2P_ATTENTION = "editgen_bench_p2p"


def p2p_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention; on modules tagged with `_p2p_targets = n`, rows 1..n (targets) get
    the probabilities of row 0 (source) @ mapper before the value matmul."""
    import torch

    n = getattr(module, "_p2p_targets", 0)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.softmax(weights, dim=-1)  # [rows, heads, q, T]
    if n:
        mapper = module._p2p_mapper  # [T, T] identity ("replace" with equal token counts)
        weights = weights.clone()
        weights[1:1 + n] = torch.matmul(weights[0:1], mapper).expand(n, -1, -1, -1)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def prepare(loaded, workload: str, batch: int):
    """Sets the attention implementation for `workload` and returns the text inputs.

    generate: `batch` prompts, eager attention. edit: [source, batch targets], P2P
    attention on every cross-attention module."""
    import torch
    from transformers import AttentionInterface

    model = loaded.model
    dec_layers = model.decoder.model.decoder.layers
    T = loaded.shapes.max_text_tokens
    if workload == "edit":
        AttentionInterface.register(P2P_ATTENTION, p2p_attention)
        model.decoder.config._attn_implementation = P2P_ATTENTION
        prompts = [SOURCE] + targets(batch)
        for layer in dec_layers:
            layer.encoder_attn._p2p_targets = batch
            layer.encoder_attn._p2p_mapper = torch.eye(T)
    else:
        model.decoder.config._attn_implementation = "eager"
        prompts = plain_prompts(batch)
        for layer in dec_layers:
            layer.encoder_attn._p2p_targets = 0
    enc = [loaded.tokenizer.encode(p) for p in prompts]
    ids = torch.from_numpy(np.stack([e.ids for e in enc]))
    mask = torch.from_numpy(np.stack([e.mask for e in enc]))
    return ids, mask


def e2e(loaded, workload: str, batch: int, steps: int) -> float:
    """Seconds of one `generate` call of `steps` decoder steps, audio decode included."""
    import torch

    model = loaded.model
    ids, mask = prepare(loaded, workload, batch)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=TOP_K,
                       guidance_scale=GUIDANCE, max_new_tokens=steps)
    return time.perf_counter() - start


class StepBench:
    """Steady-state decoder steps of transformers at past length `past` (module docstring)."""

    def __init__(self, loaded, workload: str, batch: int, past: int):
        import torch
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        self.torch = torch
        self.model = model = loaded.model
        shapes = loaded.shapes
        self.K = shapes.num_codebooks
        self.vocab = shapes.vocab_size
        ids, mask = prepare(loaded, workload, batch)
        self.n = ids.shape[0]  # conditional rows
        self.rows = 2 * self.n
        self.past = past
        with torch.inference_mode():
            hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            # CFG as MusicGen's generate: null rows are zero states with zero mask.
            self.hidden = torch.cat([hidden, torch.zeros_like(hidden)])
            self.mask = torch.cat([mask, torch.zeros_like(mask)])
            self.cache = EncoderDecoderCache(DynamicCache(config=model.decoder.config),
                                             DynamicCache(config=model.decoder.config))
            bos = torch.full((self.rows * self.K, 1), shapes.pad_token_id, dtype=torch.long)
            self._forward(bos)  # fills the cross-attention cache and one self position
            shape = (self.rows, shapes.num_heads, past, shapes.head_dim)
            for layer in self.cache.self_attention_cache.layers:
                layer.keys = torch.rand(shape)  # distinct values: resident, not merged pages
                layer.values = torch.rand(shape)
        self.next_ids = torch.randint(0, self.vocab, (self.rows * self.K, 1))
        self.generator = torch.Generator().manual_seed(0)

    def _forward(self, decoder_ids):
        return self.model(encoder_outputs=(self.hidden,), attention_mask=self.mask, decoder_input_ids=decoder_ids,
                          cache=self.cache, use_cache=True).logits

    def burst(self, steps: int) -> None:
        torch = self.torch
        with torch.inference_mode():
            for _ in range(steps):
                logits = self._forward(self.next_ids)[:, -1].view(self.rows, self.K, self.vocab)
                cond, uncond = logits[:self.n], logits[self.n:]
                guided = uncond + GUIDANCE * (cond - uncond)  # [n, K, vocab]
                values, index = torch.topk(guided, TOP_K, dim=-1)
                probs = torch.softmax(values, dim=-1).view(-1, TOP_K)
                pick = torch.multinomial(probs, 1, generator=self.generator)
                codes = index.view(-1, TOP_K).gather(1, pick).view(self.n, self.K)
                self.next_ids = torch.cat([codes, codes]).reshape(-1, 1)
            for layer in self.cache.self_attention_cache.layers:  # back to `past` positions
                layer.keys = layer.keys[:, :, :self.past]
                layer.values = layer.values[:, :, :self.past]
