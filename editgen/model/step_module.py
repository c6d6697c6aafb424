"""The decoder step: one MusicGen decoder step for all rows, with explicit tensors.

Weights are taken from transformers' MusicgenForConditionalGeneration. DecoderStep owns
everything but the attention: the embedding, each layer's norms, projections, residuals
and FFN, the LM heads. Its self-attention and edited cross-attention are parts plugged in
at construction (editgen.model.attention): the eager torch reference by default, which is
what the export and the torch backend run (self-attention over a static-capacity cache,
returning this position's K/V for the runtime to write; cross-attention as explicit
matmul, softmax, matmul, so its probabilities can be edited and returned), or the fused
kernels of the triton backend (editgen.kernels.step_attention). The edit formula and why
it is written the way it is: docs/design.md, "The edit".
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from editgen.model.attention import AttentionDims, EagerCrossAttention, EagerSelfAttention
from editgen.model.edit_tensors import EditTensors


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
    """One decoder step for all rows. Inputs and outputs: docs/design.md, "Step graph"
    (the exported graph's flat inputs: editgen.export.graphs.StepGraph).

    `self_attention`, `cross_attention`: how to build each attention part from the step's
    AttentionDims (editgen.model.attention describes a part); the eager reference by default."""

    def __init__(self, model, fused: bool = False, row_invariant: bool = False, *,
                 self_attention: Callable[[AttentionDims], object] = EagerSelfAttention,
                 cross_attention: Callable[[AttentionDims], object] = EagerCrossAttention):
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
        # What the scores are still multiplied by: the fused q projections are prescaled.
        dims = AttentionDims(self.heads, self.head_dim, 1.0 if fused else self.scaling)
        self.self_attention = self_attention(dims)
        self.cross_attention = cross_attention(dims)
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
                edit: EditTensors):
        """The step with the eager attention parts (the exported graph, the torch backend).

        codes: int64 [rows, K]; positions: int64 [rows]; `past_keys`, `past_values`: one
        tensor per layer [rows, heads, capacity, head_dim]; `cross_keys`, `cross_values`: one
        per layer [rows, heads, T, head_dim]; text_mask: [rows, T]. Sequences, so that every
        layer's K/V is its own graph input (`StepGraph`): ONNX Runtime has no strided views,
        and slicing one [layers, ...] input inside the graph copies the slice every step.
        Callers holding one buffer pass views (`kv[i, 0]`): no copy.

        Returns logits [rows, K, vocab], new_kv [layers, 2, rows, heads, head_dim] (this
        position's K/V, for the caller to write) and cross_attn [layers, rows, heads, T]."""
        # Everything that does not depend on the layer is computed once here, in the shapes
        # the layers broadcast it to (one node each in the graph, not one per layer).
        self_terms = self.self_attention.terms(positions, past_keys[0].shape[2], edit)
        cross_terms = self.cross_attention.terms(text_mask, edit)
        logits, new_kv, probs = self.decode(codes, positions, past_keys, past_values, cross_keys, cross_values,
                                            self_terms, cross_terms)
        # Stacked once here, not reshaped per layer: [layers, rows, 2, heads, head_dim] ->
        # [layers, 2, rows, heads, head_dim]; [layers, rows, heads, 1, T] -> [layers, rows, heads, T].
        return logits, torch.stack(new_kv).transpose(1, 2), torch.stack(probs).flatten(3)

    def decode(self, codes, positions, past_keys, past_values, cross_keys, cross_values, self_terms, cross_terms):
        """The step through its attention parts, whichever they are: the embedding, per layer
        the self-attention and the layer tail, the logits. `*_keys[i]`, `*_values[i]`: layer
        i's K/V as the parts read them; `*_terms`: the parts' `terms` of this step. Returns
        logits [rows, K, vocab] and per layer what the parts return: this position's K/V and
        the maps used (None where a part keeps them itself)."""
        x = self.embed_codes(codes, positions)  # [rows, 1, hidden]
        new_kv, probs = [], []
        for i in range(len(self.layers)):
            attn, kv = self.self_attention(i, self.qkv_projection(i, x), past_keys[i], past_values[i], self_terms)
            x, p = self.layer_tail(i, x, attn, cross_keys[i], cross_values[i], cross_terms)
            new_kv.append(kv)
            probs.append(p)
        return self.lm_logits(x), new_kv, probs

    def embed_codes(self, codes, positions):
        """codes [rows, K], positions [rows] -> the sum of the K codebook embeddings plus the
        position's: [rows, 1, hidden]. One flat table, so the export is a single Gather."""
        offsets = torch.arange(self.num_codebooks, device=codes.device) * self.embed.shape[1]
        x = self.embed.reshape(-1, self.embed.shape[2])[codes + offsets].sum(dim=1)
        x = x + self.positions[positions]
        return x[:, None, :]

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

    def layer_tail(self, layer_index, x, attn_out, cross_k, cross_v, cross_terms):
        """The rest of a layer after its self-attention: out projection and residual, the
        (edited) cross-attention block (norm, q projection, the cross-attention part, out
        projection and residual), the FFN. attn_out: [rows, 1, hidden] (heads merged).
        Returns x [rows, 1, hidden] and the cross-attention part's maps."""
        layer = self.layers[layer_index]
        x = x + self._linear(layer.self_attn.out_proj, attn_out)
        h = layer.encoder_attn_layer_norm(x)
        q = self._linear(self.cross_q[layer_index] if self.fused else layer.encoder_attn.q_proj, h)
        attn, p = self.cross_attention(layer_index, q, cross_k, cross_v, cross_terms)
        x = x + self._linear(layer.encoder_attn.out_proj, attn)
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
