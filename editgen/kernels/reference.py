"""Plain torch references for the fused attention kernels: the spec they are tested against.

fp32 math whatever the input dtype; written for clarity, not speed. The cross-attention
edit is the eager EagerCrossAttention's formula term for term (editgen.model.attention;
docs/design.md, "The edit"); the decode self-attention is EagerSelfAttention with its
self-injection S = S_own - b * (S_own - S_src), over each row's own length.
"""

from __future__ import annotations

import torch

NEG = torch.finfo(torch.float32).min  # additive text mask, as transformers' eager attention


def edited_cross_attention_ref(q, k, v, text_mask, src_row, use_captured, captured, mapper, alpha, weight,
                               window, keep, scale: float):
    """One query position per row, cross-attention over the row's text, edited.

    q: [R, H, D]; k, v: [R, H, T, D] (each row's own cross K/V); text_mask: [R, T] (1 valid, 0 pad);
    src_row: int64 [R] (the row's source within the batch; r for unedited rows);
    use_captured: [R] (> 0.5: the source maps come from `captured`); captured: [R, H, T];
    mapper: [R, T, T] ([source token, target token]); alpha, weight, window: [R, T];
    keep: [R] (a_i, the layer's cross blend; 1 keeps the row's own map); scale: the score
    factor (1/sqrt(D), or 1.0 when q is prescaled).
    Returns (out [R, H, D], p [R, H, T]), float32.
    """
    f32 = torch.float32
    q, k, v = q.to(f32), k.to(f32), v.to(f32)
    # The additive finite mask, not -inf: a row whose text is all padding (the CFG null
    # rows) gets a uniform softmax, exactly as the model does.
    bias = (1.0 - text_mask.to(f32)) * NEG  # [R, T]
    scores = scale * torch.einsum("rhd,rhtd->rht", q, k) + bias[:, None, :]
    p_own = torch.softmax(scores, dim=-1)  # [R, H, T]
    p_src = torch.where(use_captured.to(f32)[:, None, None] > 0.5, captured.to(f32), p_own[src_row.long()])
    base = torch.einsum("rhs,rst->rht", p_src, mapper.to(f32))
    alpha, weight, window = (x.to(f32)[:, None, :] for x in (alpha, weight, window))  # [R, 1, T]
    inj = (alpha * base + (1.0 - alpha) * p_own) * weight
    inj = window * inj + (1.0 - window) * p_own
    # p_own - (1 - a) * (p_own - inj), not a * p_own + (1 - a) * inj: a = 1 (or inj = p_own)
    # gives p_own bit for bit.
    p = p_own - (1.0 - keep.to(f32))[:, None, None] * (p_own - inj)
    out = torch.einsum("rht,rhtd->rhd", p, v)
    return out, p


def decode_self_attention_ref(q, k_new, v_new, k_cache, v_cache, slots, positions, src_row, self_b, scale: float):
    """One decode step of self-attention for rows at their own positions, with the source's
    probabilities injected, then this step's K/V written into the cache.

    q, k_new, v_new: [R, H, D] (this step's projections); k_cache, v_cache: [S, H, P, D] (one
    layer of the slot pool; row r owns slot slots[r]); positions: int64 [R] (row r attends
    positions 0..positions[r]-1 of its slot plus its new entry); src_row: int64 [R];
    self_b: [R] (the source's weight b = self_window * self_blend[i]; 0 = no injection); scale as above.

        S_own[r] = softmax([scale * q . k_cache[slot, :, :pos], scale * q . k_new])   # pos + 1 entries
        S[r]     = S_own[r] - b[r] * (S_own[r] - S_own[src_row[r]])
        out[r]   = S[:pos] @ v_cache[slot, :, :pos] + S[pos] * v_new[r]              # the row's OWN values

    Writes k_new, v_new at (slots[r], :, positions[r]) in place (after reading: positions
    < pos only, so the order does not matter). Returns out [R, H, D] float32.
    """
    f32 = torch.float32
    rows, capacity = q.shape[0], k_cache.shape[2]
    slots, positions, src_row = (x.tolist() for x in (slots, positions, src_row))
    b = self_b.to(f32).tolist()
    if len(set(slots)) != rows:
        raise ValueError(f"slots {slots} are not distinct: each row owns its slot")
    for r, pos in enumerate(positions):
        if not 0 <= pos < capacity:
            raise ValueError(f"row {r}: position {pos} outside the cache's 0..{capacity - 1}")
        if b[r] != 0 and positions[src_row[r]] != pos:
            raise ValueError(f"row {r} (position {pos}) injects its source row {src_row[r]} at position "
                             f"{positions[src_row[r]]}: a source and its targets step together, at one position")

    s_own = []  # [H, pos + 1] per row
    for r in range(rows):
        pos, slot = positions[r], slots[r]
        keys = torch.cat([k_cache[slot, :, :pos].to(f32), k_new[r, :, None].to(f32)], dim=1)  # [H, pos + 1, D]
        s_own.append(torch.softmax(scale * torch.einsum("hd,hnd->hn", q[r].to(f32), keys), dim=-1))
    out = torch.empty(q.shape, dtype=f32, device=q.device)
    for r in range(rows):
        pos, slot = positions[r], slots[r]
        s = s_own[r]
        if b[r] != 0:
            s = s - b[r] * (s - s_own[src_row[r]])
        out[r] = torch.einsum("hn,hnd->hd", s[:, :pos], v_cache[slot, :, :pos].to(f32)) + s[:, pos:] * v_new[r].to(f32)
    for r in range(rows):
        k_cache[slots[r], :, positions[r]] = k_new[r].to(k_cache.dtype)
        v_cache[slots[r], :, positions[r]] = v_new[r].to(v_cache.dtype)
    return out
