"""The decoder step that is exported: one MusicGen decoder step with explicit tensors.

Weights are taken from transformers' MusicgenForConditionalGeneration. Self-attention
reads a static-capacity KV cache (one K and one V tensor per layer) and returns this
position's K/V (`new_kv`) for the runtime to write; cross-attention is explicit (matmul, softmax, matmul) so that its
probabilities can be edited and returned. The edit formula and why it is written the
way it is: docs/design.md, "The edit".
"""

from __future__ import annotations

import torch
from torch import nn

NEG = torch.finfo(torch.float32).min  # additive mask, as transformers' eager attention


class CrossKV(nn.Module):
    """Text hidden states -> every layer's cross-attention K and V (once per request).

    hidden: [rows, T, text_hidden], mask: [rows, T] -> k, v: [layers, rows, heads, T, head_dim]
    """

    def __init__(self, model):
        super().__init__()
        self.proj = getattr(model, "enc_to_dec_proj", None)
        dec = model.decoder.model.decoder
        self.k_proj = nn.ModuleList(layer.encoder_attn.k_proj for layer in dec.layers)
        self.v_proj = nn.ModuleList(layer.encoder_attn.v_proj for layer in dec.layers)
        self.heads = model.config.decoder.num_attention_heads

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor):
        if self.proj is not None:
            hidden = self.proj(hidden)
        # As transformers: padded (and null-text) positions become exact zeros after projection.
        hidden = hidden * mask.to(hidden.dtype)[..., None]
        rows, t, _ = hidden.shape
        ks = [k(hidden).view(rows, t, self.heads, -1).transpose(1, 2) for k in self.k_proj]
        vs = [v(hidden).view(rows, t, self.heads, -1).transpose(1, 2) for v in self.v_proj]
        return torch.stack(ks), torch.stack(vs)


class DecoderStep(nn.Module):
    """One decoder step for all rows. Inputs and outputs: docs/design.md, "Step contract"
    (the exported graph's flat inputs: editgen.export.graphs.StepGraph)."""

    def __init__(self, model):
        super().__init__()
        dec = model.decoder.model.decoder
        cfg = model.config.decoder
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.num_codebooks = cfg.num_codebooks
        self.vocab = cfg.vocab_size
        # [K, vocab + 1, hidden]: one table per codebook, +1 for the pad/BOS id.
        self.embed = nn.Parameter(torch.stack([e.weight for e in dec.embed_tokens]).detach(), requires_grad=False)
        self.register_buffer("positions", dec.embed_positions.weights.detach().clone(), persistent=False)
        self.layers = dec.layers
        self.final_norm = dec.layer_norm
        # All K heads as one matmul: [K * vocab, hidden].
        heads = torch.cat([h.weight for h in model.decoder.lm_heads])
        self.lm_head = nn.Parameter(heads.detach(), requires_grad=False)

    def forward(self, codes, position, past_keys, past_values, cross_keys, cross_values, text_mask,
                edit_src_row, edit_mapper, edit_alpha, edit_weight, edit_window, edit_blend,
                edit_use_captured, edit_captured):
        """`past_keys`, `past_values`: one tensor per layer [rows, heads, capacity, head_dim];
        `cross_keys`, `cross_values`: one per layer [rows, heads, T, head_dim]. Sequences, so
        that every layer's K/V is its own graph input (`StepGraph`): ONNX Runtime has no
        strided views, and slicing one [layers, ...] input inside the graph copies the
        slice every step. Callers holding one buffer pass views (`kv[i, 0]`): no copy."""
        rows = codes.shape[0]
        capacity = past_keys[0].shape[2]
        # codes: [rows, K] -> sum of the K codebook embeddings: [rows, hidden]
        # One flat table so the export is a single Gather.
        offsets = torch.arange(self.num_codebooks, device=codes.device) * self.embed.shape[1]
        x = self.embed.reshape(-1, self.embed.shape[2])[codes + offsets].sum(dim=1)
        x = x + self.positions[position]
        x = x[:, None, :]  # [rows, 1, hidden]

        past_valid = torch.arange(capacity, device=codes.device) < position  # [capacity]
        self_bias = torch.where(past_valid, 0.0, NEG)  # [capacity]
        cross_bias = (1.0 - text_mask.to(x.dtype)) * NEG  # [rows, T]
        cross_bias = cross_bias[:, None, None, :]

        new_kv, probs = [], []
        for i, layer in enumerate(self.layers):
            h = layer.self_attn_layer_norm(x)
            attn, k_new, v_new = self._self_attention(layer.self_attn, h, past_keys[i], past_values[i], self_bias)
            x = x + attn
            new_kv.append(torch.stack([k_new, v_new]))

            h = layer.encoder_attn_layer_norm(x)
            attn, p = self._cross_attention(
                layer.encoder_attn, h, cross_keys[i], cross_values[i], cross_bias, i,
                edit_src_row, edit_mapper, edit_alpha, edit_weight, edit_window, edit_blend,
                edit_use_captured, edit_captured)
            x = x + attn
            probs.append(p)

            h = layer.final_layer_norm(x)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))

        x = self.final_norm(x[:, 0])  # [rows, hidden]
        logits = (x @ self.lm_head.T).view(rows, self.num_codebooks, self.vocab)
        return logits, torch.stack(new_kv), torch.stack(probs)

    def _split(self, t):  # [rows, 1, hidden] -> [rows, heads, 1, head_dim]
        return t.view(t.shape[0], 1, self.heads, self.head_dim).transpose(1, 2)

    def _merge(self, t):  # [rows, heads, 1, head_dim] -> [rows, 1, hidden]
        return t.transpose(1, 2).reshape(t.shape[0], 1, self.heads * self.head_dim)

    def _self_attention(self, attn, h, k_cache, v_cache, bias):
        # k_cache, v_cache: [rows, heads, capacity, head_dim]; bias: [capacity]
        q = self._split(attn.q_proj(h))
        k_new = self._split(attn.k_proj(h))
        v_new = self._split(attn.v_proj(h))
        scores_past = (q @ k_cache.transpose(-1, -2)) * self.scaling + bias  # [rows, heads, 1, capacity]
        score_new = (q @ k_new.transpose(-1, -2)) * self.scaling  # [rows, heads, 1, 1]
        p = torch.softmax(torch.cat([scores_past, score_new], dim=-1), dim=-1)
        out = p[..., :-1] @ v_cache + p[..., -1:] * v_new
        return attn.out_proj(self._merge(out)), k_new[:, :, 0], v_new[:, :, 0]

    def _cross_attention(self, attn, h, k, v, bias, layer_index,
                         src_row, mapper, alpha, weight, window, blend, use_captured, captured):
        # k, v: [rows, heads, T, head_dim]; returns the output and P: [rows, heads, T]
        q = self._split(attn.q_proj(h))
        p_own = torch.softmax((q @ k.transpose(-1, -2)) * self.scaling + bias, dim=-1)  # [rows, heads, 1, T]
        p_src = torch.where(use_captured[:, None, None, None] > 0.5,
                            captured[layer_index][:, :, None, :], p_own[src_row])
        base = p_src @ mapper[:, None]  # [rows, heads, 1, T] @ [rows, 1, T, T]
        a = alpha[:, None, None, :]
        inj = (a * base + (1.0 - a) * p_own) * weight[:, None, None, :]
        w = window[:, None, None, :]
        inj = w * inj + (1.0 - w) * p_own
        keep = blend[:, layer_index][:, None, None, None]
        p = p_own - (1.0 - keep) * (p_own - inj)
        return attn.out_proj(self._merge(p @ v)), p[:, :, 0, :]
