"""The decoder step that is exported: one MusicGen decoder step with explicit tensors.

Weights are taken from transformers' MusicgenForConditionalGeneration. Self-attention
reads a static-capacity KV cache (one K and one V tensor per layer) and returns this
position's K/V (`new_kv`) for the runtime to write; cross-attention is explicit (matmul, softmax, matmul) so that its
probabilities can be edited and returned. The edit formula and why it is written the
way it is: docs/design.md, "The edit".
"""

from __future__ import annotations

from typing import NamedTuple

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

    def __init__(self, model, fused: bool = False, row_invariant: bool = False):
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
        # fused (the export sets it): weights laid out for onnxruntime's CPU kernels.
        # - each layer's self-attention q, k, v projections as one [3 * hidden, hidden]
        #   matmul: one kernel instead of three;
        # - the attention scaling folded into the q projections (self and cross), so the
        #   score matmuls have alpha = 1: onnxruntime fuses a scale into FusedMatMul's
        #   alpha, and MLAS takes its single-row kernels (no packing of the K cache) only
        #   for alpha = 1 (measured: 24 layers of q K^T over 503 positions, 7.6 -> 4.7-5.5
        #   ms at 2 threads; the whole edit step of random:small ~52 -> ~45 ms). A power-of-two
        #   scaling (head_dim 64) is exact in the weights; the kernels' summation order
        #   differs slightly (~1e-6 on the scores, within the export tolerance).
        # Copies of those weights, so the torch backend (which keeps the model) leaves it off.
        self.fused = fused
        # row_invariant (the torch backend sets it): every weight matmul runs one row at a
        # time. torch's CPU GEMM picks its kernel (and so its rounding) by the number of rows
        # (measured: 4 rows vs 2 differ in the last bit at hidden 64), so a row's numbers
        # would depend on which rows share its step. onnxruntime's MLAS does not (measured
        # for 1..64 rows), so the export leaves it off. The price: one GEMV per row.
        self.row_invariant = row_invariant
        self.q_scale = 1.0 if fused else self.scaling  # what the scores are still multiplied by
        if fused:
            attns = [layer.self_attn for layer in dec.layers]
            assert all(getattr(a, n).bias is None for a in attns for n in ("q_proj", "k_proj", "v_proj")) and all(
                layer.encoder_attn.q_proj.bias is None for layer in dec.layers), "MusicGen projections have no bias"
            self.qkv = nn.ParameterList(
                nn.Parameter(torch.cat([a.q_proj.weight * self.scaling, a.k_proj.weight, a.v_proj.weight]).detach(),
                             requires_grad=False) for a in attns)
            self.cross_q = nn.ParameterList(
                nn.Parameter((layer.encoder_attn.q_proj.weight * self.scaling).detach(), requires_grad=False)
                for layer in dec.layers)

    def forward(self, codes, positions, past_keys, past_values, cross_keys, cross_values, text_mask,
                edit_src_row, edit_mapper, edit_alpha, edit_weight, edit_window, edit_blend,
                edit_use_captured, edit_captured, edit_self_blend, edit_self_window):
        """`past_keys`, `past_values`: one tensor per layer [rows, heads, capacity, head_dim];
        `cross_keys`, `cross_values`: one per layer [rows, heads, T, head_dim]. Sequences, so
        that every layer's K/V is its own graph input (`StepGraph`): ONNX Runtime has no
        strided views, and slicing one [layers, ...] input inside the graph copies the
        slice every step. Callers holding one buffer pass views (`kv[i, 0]`): no copy."""
        capacity = past_keys[0].shape[2]  # cache positions read (the "positions" axis)
        x = self.embed_codes(codes, positions)  # [rows, 1, hidden]
        # Everything that does not depend on the layer is computed once here, in the shapes
        # the layers broadcast it to (one node each in the graph, not one per layer).
        past_valid = torch.arange(capacity, device=codes.device)[None, :] < positions[:, None]  # [rows, capacity]
        self_bias = torch.where(past_valid, 0.0, NEG)[:, None, None, :]  # [rows, 1, 1, capacity]
        cross_bias = self.cross_bias(text_mask, x.dtype)
        edit = self.edit_terms(edit_src_row, edit_mapper, edit_alpha, edit_weight, edit_window, edit_blend,
                               edit_use_captured, edit_captured, edit_self_blend, edit_self_window)

        new_kv, probs = [], []
        for i in range(len(self.layers)):
            attn, kv = self._self_attention(self.qkv_projection(i, x), past_keys[i], past_values[i], self_bias, i, edit)
            x, p = self.layer_tail(i, x, attn, cross_keys[i], cross_values[i], cross_bias, edit)
            new_kv.append(kv)
            probs.append(p)

        logits = self.lm_logits(x)
        # Stacked once here, not reshaped per layer: [layers, rows, 2, heads, head_dim] ->
        # [layers, 2, rows, heads, head_dim]; [layers, rows, heads, 1, T] -> [layers, rows, heads, T].
        new_kv = torch.stack(new_kv).transpose(1, 2)
        probs = torch.stack(probs).flatten(3)
        return logits, new_kv, probs

    def embed_codes(self, codes, positions):
        """codes [rows, K], positions [rows] -> the sum of the K codebook embeddings plus the
        position's: [rows, 1, hidden]. One flat table, so the export is a single Gather."""
        offsets = torch.arange(self.num_codebooks, device=codes.device) * self.embed.shape[1]
        x = self.embed.reshape(-1, self.embed.shape[2])[codes + offsets].sum(dim=1)
        x = x + self.positions[positions]
        return x[:, None, :]

    @staticmethod
    def cross_bias(text_mask, dtype):  # [rows, T] -> additive mask [rows, 1, 1, T]
        return ((1.0 - text_mask.to(dtype)) * NEG)[:, None, None, :]

    @staticmethod
    def edit_terms(src_row, mapper, alpha, weight, window, blend, use_captured, captured,
                   self_blend=None, self_window=None) -> "_EditTerms":
        """The step's edit inputs as broadcast-ready terms (self-injection's only when given)."""
        self_b = None
        if self_blend is not None:  # b_i while the self window is on, else 0: [layers, rows, 1, 1, 1]
            self_b = (self_blend * self_window[:, None]).T[:, :, None, None, None]
        return _EditTerms(
            src_row=src_row,
            use_captured=use_captured[:, None, None, None] > 0.5,
            captured=captured[:, :, :, None, :],  # [layers, rows, heads, 1, T]
            mapper=mapper[:, None],  # [rows, 1, T, T]
            alpha=alpha[:, None, None, :], one_minus_alpha=(1.0 - alpha)[:, None, None, :],
            weight=weight[:, None, None, :],
            window=window[:, None, None, :], one_minus_window=(1.0 - window)[:, None, None, :],
            one_minus_blend=(1.0 - blend).T[:, :, None, None, None],  # [layers, rows, 1, 1, 1]
            self_b=self_b,
        )

    def qkv_projection(self, layer_index, x):
        """Layer `layer_index`'s self-attention LayerNorm and q, k, v projections (q scaled
        when fused): [rows, 1, hidden] -> [rows, 1, 3 * hidden]."""
        layer = self.layers[layer_index]
        h = layer.self_attn_layer_norm(x)
        if self.fused:
            return self._linear(self.qkv[layer_index], h)
        attn = layer.self_attn
        return torch.cat([self._linear(attn.q_proj, h), self._linear(attn.k_proj, h),
                          self._linear(attn.v_proj, h)], dim=-1)

    def layer_tail(self, layer_index, x, attn_out, cross_k, cross_v, cross_bias, e: "_EditTerms"):
        """The rest of a layer after its self-attention: out projection and residual, the
        (edited) cross-attention, the FFN. attn_out: [rows, 1, hidden] (heads merged)."""
        layer = self.layers[layer_index]
        x = x + self._linear(layer.self_attn.out_proj, attn_out)
        h = layer.encoder_attn_layer_norm(x)
        attn, p = self._cross_attention(layer.encoder_attn, h, cross_k, cross_v, cross_bias, layer_index, e)
        x = x + attn
        h = layer.final_layer_norm(x)
        return x + self._linear(layer.fc2, layer.activation_fn(self._linear(layer.fc1, h))), p

    def lm_logits(self, x):  # [rows, 1, hidden] -> [rows, K, vocab]
        x = self.final_norm(x)  # 3-D, so the export's LM head is a MatMul (int8 quantizes it)
        return self._linear(self.lm_head, x).view(x.shape[0], self.num_codebooks, self.vocab)

    def _linear(self, layer, x):
        """x @ W^T (+ b) for an nn.Linear or a weight [out, in]; x: [rows, ...]."""
        weight, bias = (layer.weight, layer.bias) if isinstance(layer, nn.Linear) else (layer, None)
        if not self.row_invariant:
            return nn.functional.linear(x, weight, bias)
        return torch.cat([nn.functional.linear(row, weight, bias) for row in x.split(1)])

    # One query position: [rows, 1, hidden] and [rows, heads, 1, head_dim] have the same
    # memory order, so splitting into / merging heads is a reshape (no Transpose in the graph).
    def _split(self, t):  # [rows, 1, hidden] -> [rows, heads, 1, head_dim]
        return t.view(t.shape[0], self.heads, 1, self.head_dim)

    def _merge(self, t):  # [rows, heads, 1, head_dim] -> [rows, 1, hidden]
        return t.reshape(t.shape[0], 1, self.heads * self.head_dim)

    def _scores(self, q, k):  # q K^T / sqrt(head_dim); fused: q is already scaled
        s = q @ k.transpose(-1, -2)
        return s if self.q_scale == 1.0 else s * self.q_scale

    def _self_attention(self, qkv, k_cache, v_cache, bias, layer_index, e: "_EditTerms"):
        """qkv: [rows, 1, 3 * hidden] (qkv_projection); k_cache, v_cache: [rows, heads, capacity,
        head_dim]; bias: [rows, 1, 1, capacity]. Returns the attention output, heads merged
        ([rows, 1, hidden], before the out projection), and this position's K, V: [rows, 2,
        heads, head_dim].

        Self-injection (docs/design.md, "The edit"): S = S_own - b * (S_own - S_src), S_src the
        probabilities of row src_row, which sits at the same position (paired rows step
        together); the values stay the row's own. With b = 0, or a row that is its own
        source, S is S_own bit for bit."""
        rows = qkv.shape[0]
        q, k_new, v_new = qkv.view(rows, 3 * self.heads, 1, self.head_dim).split(self.heads, dim=1)
        scores_past = self._scores(q, k_cache) + bias  # [rows, heads, 1, capacity]
        score_new = self._scores(q, k_new)  # [rows, heads, 1, 1]
        p = torch.softmax(torch.cat([scores_past, score_new], dim=-1), dim=-1)  # [rows, heads, 1, capacity + 1]
        p = p - e.self_b[layer_index] * (p - p[e.src_row])
        out = p[..., :-1] @ v_cache + p[..., -1:] * v_new
        kv = qkv.view(rows, 3, self.heads, self.head_dim)[:, 1:]
        return self._merge(out), kv

    def _cross_attention(self, attn, h, k, v, bias, layer_index, e: "_EditTerms"):
        # k, v: [rows, heads, T, head_dim]; returns the output and P: [rows, heads, 1, T].
        # The edit exactly as docs/design.md writes it ("The edit"), on the hoisted terms.
        q = self._split(self._linear(self.cross_q[layer_index] if self.fused else attn.q_proj, h))
        p_own = torch.softmax(self._scores(q, k) + bias, dim=-1)  # [rows, heads, 1, T]
        p_src = torch.where(e.use_captured, e.captured[layer_index], p_own[e.src_row])
        base = p_src @ e.mapper  # [rows, heads, 1, T] @ [rows, 1, T, T]
        inj = (e.alpha * base + e.one_minus_alpha * p_own) * e.weight
        inj = e.window * inj + e.one_minus_window * p_own
        p = p_own - e.one_minus_blend[layer_index] * (p_own - inj)
        return self._linear(attn.out_proj, self._merge(p @ v)), p


class _EditTerms(NamedTuple):
    """The step's edit tensors, broadcast-ready for [rows, heads, 1, T] probabilities
    (per-layer ones with a leading layers axis). `one_minus_*` hold 1 - x, computed once."""

    src_row: torch.Tensor
    use_captured: torch.Tensor
    captured: torch.Tensor
    mapper: torch.Tensor
    alpha: torch.Tensor
    one_minus_alpha: torch.Tensor
    weight: torch.Tensor
    window: torch.Tensor
    one_minus_window: torch.Tensor
    one_minus_blend: torch.Tensor
    self_b: torch.Tensor
