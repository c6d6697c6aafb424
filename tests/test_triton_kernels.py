"""The Triton attention kernels (editgen.kernels) against their torch references, and the
references against the model (DecoderStep) and torch's own attention.

Without CUDA the kernels run in Triton's interpreter on CPU tensors: TRITON_INTERPRET=1 is
set here, before this module imports triton (the kernels are decorated at import; it stays
set in this worker, where nothing else uses triton). With CUDA the same tests launch the
compiled kernels on the GPU. Small shapes: the interpreter runs every program in numpy.
Tolerances: fp32 1e-5; the maps stay fp32-exact for half inputs (the math is fp32), the
outputs carry the output dtype's rounding (fp16 2e-3, bf16 1.6e-2)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")
if not CUDA:
    from tests.triton_interpreter import speed_up

    speed_up()

from editgen.kernels.cross_attention import edited_cross_attention  # noqa: E402
from editgen.kernels.decode_attention import decode_self_attention  # noqa: E402
from editgen.kernels.reference import decode_self_attention_ref, edited_cross_attention_ref  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
F32 = dict(atol=1e-5, rtol=1e-5)
OUT_TOL = {torch.float32: F32, torch.float16: dict(atol=2e-3, rtol=2e-3),
           torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2)}
CROSS_ARGS = ("q", "k", "v", "text_mask", "src_row", "use_captured", "captured", "mapper", "alpha", "weight",
              "window", "keep", "scale")
DECODE_ARGS = ("q", "k_new", "v_new", "k_cache", "v_cache", "slots", "positions", "src_row", "self_b", "scale")


def _randn(g, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dtype)


# ---------------------------------------------------------------- cross-attention

CROSS_OPS = ["replace", "refine", "reweight-2", "reweight0.5", "reweight2", "window", "keep0", "keep0.5",
             "keep1", "captured"]


def _identity_edit(rows, heads, T):
    """EditStepInputs.identity's values: every row its own source, unedited."""
    return dict(src_row=torch.arange(rows), use_captured=torch.zeros(rows), captured=torch.zeros(rows, heads, T),
                mapper=torch.eye(T).repeat(rows, 1, 1), alpha=torch.ones(rows, T), weight=torch.ones(rows, T),
                window=torch.zeros(rows, T), keep=torch.ones(rows))


def _cross_case(op, heads=3, T=12, D=24, dtype=torch.float32, seed=0, groups=1):
    """Five rows as a step has them: 0 source A, 1 its target edited by `op`, 2 source B
    with padded text, 3 its target edited by `op`, 4 a CFG null row (all text masked);
    `groups` such blocks one after another. Returns edited_cross_attention's arguments by name."""
    g = torch.Generator().manual_seed(seed)
    rows = 5 * groups
    case = _identity_edit(rows, heads, T)
    mask = torch.ones(rows, T)
    perm = torch.randperm(T, generator=g)
    for first in range(0, rows, 5):
        mask[first + 2, T - 2:] = 0
        mask[first + 3, T - 1:] = 0
        mask[first + 4] = 0
        for r, src in ((first + 1, first), (first + 3, first + 2)):
            case["src_row"][r] = src
            case["mapper"][r] = torch.eye(T)[perm]  # replace: target token t reads source token perm^-1(t)
            case["window"][r] = 1.0
            case["keep"][r] = 0.0
            if op == "refine":  # every third target token is new: no source token, its own map
                new = torch.arange(T) % 3 == 2
                case["mapper"][r][:, new] = 0.0
                case["alpha"][r][new] = 0.0
                case["keep"][r] = 0.5
            elif op.startswith("reweight"):
                case["mapper"][r] = torch.eye(T)
                case["weight"][r][1:3] = float(op[len("reweight"):])
            elif op == "window":  # the step window is on for some tokens only
                case["window"][r] = (torch.arange(T) % 2 == 0).float()
            elif op.startswith("keep"):
                case["keep"][r] = float(op[len("keep"):])
            elif op == "captured":
                case["use_captured"][r] = 1.0
                case["captured"][r] = torch.softmax(torch.randn(heads, T, generator=g) * 3, dim=-1)
            else:
                assert op == "replace", op
    case = {name: x.to(DEVICE) for name, x in case.items()}
    # q * 2: scores of a few units, maps peaked enough for an edit to move them.
    case.update(q=_randn(g, rows, heads, D, dtype=dtype) * 2, k=_randn(g, rows, heads, T, D, dtype=dtype),
                v=_randn(g, rows, heads, T, D, dtype=dtype), text_mask=mask.to(DEVICE), scale=D**-0.5)
    return case


def _cross(case, **kwargs):
    return edited_cross_attention(*(case[n] for n in CROSS_ARGS), **kwargs)


def _cross_ref(case):
    return edited_cross_attention_ref(*(case[n] for n in CROSS_ARGS))


@pytest.mark.parametrize("op", CROSS_OPS)
@pytest.mark.parametrize("heads,T,D", [(3, 5, 16), (3, 12, 24)])
def test_cross_kernel_matches_reference(op, heads, T, D):
    case = _cross_case(op, heads, T, D)
    probs = torch.empty(5, heads, T, device=DEVICE)
    out, p = _cross(case, probs=probs)
    ref_out, ref_p = _cross_ref(case)
    assert p is probs
    torch.testing.assert_close(p, ref_p, **F32)
    torch.testing.assert_close(out, ref_out, **F32)
    # The edit did something (the test does not compare two unedited maps) ...
    unedited = _cross_ref({**case, **{n: x.to(DEVICE) for n, x in _identity_edit(5, heads, T).items()}})[1]
    if op != "keep1":
        assert (ref_p[[1, 3]] - unedited[[1, 3]]).abs().max() > 1e-3
    # ... and a row whose text is all padding (CFG null) gets a uniform map, as the model.
    torch.testing.assert_close(p[4], torch.full((heads, T), 1.0 / T, device=DEVICE), **F32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", ["refine", "captured"])
def test_cross_kernel_half_inputs_compute_in_fp32(dtype, op):
    case = _cross_case(op, heads=3, T=12, D=24, dtype=dtype)
    out, p = _cross(case, probs=torch.empty(5, 3, 12, device=DEVICE))
    ref_out, ref_p = _cross_ref(case)  # fp32 math on the same half inputs
    assert out.dtype == dtype
    torch.testing.assert_close(p, ref_p, **F32)  # fp32 maps: half inputs, no half rounding inside
    torch.testing.assert_close(out.float(), ref_out, **OUT_TOL[dtype])


def test_cross_kernel_unedited_maps_are_bit_exact():
    """keep = 1, or window 0, or identity edit inputs give the row's own map bit for bit:
    what the engine relies on for source and unconditional rows."""
    case = _cross_case("refine", heads=3, T=12, D=24)
    own = {**case, **{n: x.to(DEVICE) for n, x in _identity_edit(5, 3, 12).items()}}
    runs = {"identity": own,
            "identity, window 1, keep 0": {**own, "window": torch.ones_like(own["window"]),
                                           "keep": torch.zeros_like(own["keep"])},
            "keep 1": {**case, "keep": torch.ones_like(case["keep"])},
            "window 0": {**case, "window": torch.zeros_like(case["window"])}}
    results = {name: _cross(c, probs=torch.empty(5, 3, 12, device=DEVICE)) for name, c in runs.items()}
    out_own, p_own = results.pop("identity")
    for name, (out, p) in results.items():
        assert torch.equal(p, p_own), name
        assert torch.equal(out, out_own), name
    # Sources are edited with identity inputs inside an edited step: same bits as alone.
    out_edited, p_edited = _cross(case, probs=torch.empty(5, 3, 12, device=DEVICE))
    for r in (0, 2, 4):
        assert torch.equal(p_edited[r], p_own[r]) and torch.equal(out_edited[r], out_own[r])


def test_cross_kernel_writes_probs_only_when_asked():
    case = _cross_case("replace", heads=3, T=5, D=16)
    # probs as a strided view inside a NaN-filled buffer: every element of the view is
    # written, nothing around it.
    buffer = torch.full((5, 3, 5 + 3), float("nan"), device=DEVICE)
    view = buffer[:, :, 1:6]
    out, p = _cross(case, probs=view)
    torch.testing.assert_close(view, _cross_ref(case)[1], **F32)
    assert torch.isnan(buffer[:, :, 0]).all() and torch.isnan(buffer[:, :, 6:]).all()
    # Without probs: no maps, the same outputs.
    out_alone, none = _cross(case)
    assert none is None and torch.equal(out_alone, out)


class _Spy:
    """An attention part of DecoderStep that records each layer's input (qkv or q) and result."""

    def __init__(self, part):
        self.part, self.calls = part, []

    def terms(self, *args):
        return self.part.terms(*args)

    def __call__(self, layer_index, x, *args):
        result = self.part(layer_index, x, *args)
        self.calls.append((x, result))
        return result


def test_cross_reference_is_the_decoder_steps_formula(tiny):
    """edited_cross_attention_ref and decode_self_attention_ref against what DecoderStep
    computes, layer by layer, inside a whole step of the tiny model (refine and captured
    rows, cross blends 0, 0.5, 1, self-injection b 0.25 to 1 and a window off, rows at
    positions 0 and capacity - 1): the spec is the model."""
    from editgen.model.edit_tensors import EditTensors
    from editgen.model.step_module import DecoderStep

    step = DecoderStep(tiny.model).eval()
    cfg = tiny.model.config.decoder
    heads, D, layers, K = step.heads, step.head_dim, len(step.layers), cfg.num_codebooks
    T, capacity, g = 6, 8, torch.Generator().manual_seed(1)
    case = _cross_case("refine", heads=heads, T=T, D=D)
    rows = 5
    case["keep"] = None  # per layer below
    blend = torch.tensor([[1.0, 1.0], [0.0, 0.5], [1.0, 1.0], [0.5, 0.0], [1.0, 1.0]])[:, :layers]
    captured = torch.softmax(torch.randn(layers, rows, heads, T, generator=g), dim=-1)
    case["use_captured"][3] = 1.0
    positions = torch.tensor([capacity - 1, capacity - 1, 3, 3, 0])  # a target at its source's position
    self_blend = torch.tensor([[0.0, 0.0], [0.5, 1.0], [0.0, 0.0], [1.0, 0.25], [0.7, 0.7]])[:, :layers]
    self_window = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0])  # row 4: b_i set, its window off
    past_k = [torch.randn(rows, heads, capacity, D, generator=g) for _ in range(layers)]
    past_v = [torch.randn(rows, heads, capacity, D, generator=g) for _ in range(layers)]
    cross_k = [torch.randn(rows, heads, T, D, generator=g) for _ in range(layers)]
    cross_v = [torch.randn(rows, heads, T, D, generator=g) for _ in range(layers)]

    step.self_attention, step.cross_attention = _Spy(step.self_attention), _Spy(step.cross_attention)
    c = {n: x.cpu() if isinstance(x, torch.Tensor) else x for n, x in case.items()}
    edit = EditTensors(src_row=c["src_row"], mapper=c["mapper"], alpha=c["alpha"], weight=c["weight"],
                       window=c["window"], blend=blend, use_captured=c["use_captured"], captured=captured,
                       self_blend=self_blend, self_window=self_window)
    with torch.no_grad():
        step(torch.randint(0, cfg.vocab_size, (rows, K), generator=g), positions, past_k, past_v, cross_k, cross_v,
             c["text_mask"], edit)
        for i in range(layers):
            q, (out_model, p_model) = step.cross_attention.calls[i]  # q: the layer's cross q projection
            out, p = edited_cross_attention_ref(q.view(rows, heads, D), cross_k[i], cross_v[i], c["text_mask"],
                                                c["src_row"], c["use_captured"], captured[i], c["mapper"], c["alpha"],
                                                c["weight"], c["window"], blend[:, i], step.scaling)
            torch.testing.assert_close(p, p_model[:, :, 0], atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(out.reshape(rows, 1, heads * D), out_model, **F32)  # before out_proj

            qkv, (out_model, kv) = step.self_attention.calls[i]  # qkv: the layer's q, k, v projections
            q = qkv[..., : heads * D].reshape(rows, heads, D)
            out = decode_self_attention_ref(q, kv[:, 0], kv[:, 1], past_k[i].clone(), past_v[i].clone(),
                                            torch.arange(rows), positions, c["src_row"], self_blend[:, i] * self_window,
                                            step.scaling)
            torch.testing.assert_close(out.reshape(rows, 1, heads * D), out_model, **F32)  # before out_proj


def test_cross_launcher_rejects_bad_arguments(monkeypatch):
    case = _cross_case("replace", heads=3, T=5, D=16)
    with pytest.raises(ValueError, match=r"mapper has shape \(5, 5, 4\), expected \(5, 5, 5\)"):
        _cross({**case, "mapper": case["mapper"][:, :, :4]})
    with pytest.raises(ValueError, match="v is torch.float16"):
        _cross({**case, "v": case["v"].half()})
    with pytest.raises(ValueError, match="q is torch.int64"):
        _cross({**case, "q": case["q"].long()})
    with pytest.raises(ValueError, match="probs has shape"):
        _cross(case, probs=torch.empty(5, 3, 4, device=DEVICE))
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            _cross(case)


# ---------------------------------------------------------------- decode self-attention

CAPACITY, SLOTS = 20, 8


def _decode_case(dtype=torch.float32, cache_dtype=None, heads=3, D=24, seed=0):
    """Seven rows on slots out of order (slot 7 unused): A source / target at position 7
    (odd) with b 0.5; B at capacity - 1 with b 1; C at position 0 (only the new entry)
    with b 0.5; a lone row at position 1, its own source with b 0.5 (injects itself: nothing)."""
    g = torch.Generator().manual_seed(seed)
    rows = 7
    cache_dtype = cache_dtype or dtype
    return dict(q=_randn(g, rows, heads, D, dtype=dtype) * 2, k_new=_randn(g, rows, heads, D, dtype=dtype),
                v_new=_randn(g, rows, heads, D, dtype=dtype),
                k_cache=_randn(g, SLOTS, heads, CAPACITY, D, dtype=cache_dtype),
                v_cache=_randn(g, SLOTS, heads, CAPACITY, D, dtype=cache_dtype),
                slots=torch.tensor([3, 0, 5, 1, 2, 4, 6], device=DEVICE),
                positions=torch.tensor([7, 7, CAPACITY - 1, CAPACITY - 1, 0, 0, 1], device=DEVICE),
                src_row=torch.tensor([0, 0, 2, 2, 4, 4, 6], device=DEVICE),
                self_b=torch.tensor([0.0, 0.5, 0.0, 1.0, 0.0, 0.5, 0.5], device=DEVICE), scale=D**-0.5)


def _clone(case):
    return {n: x.clone() if isinstance(x, torch.Tensor) else x for n, x in case.items()}


def _decode(case, **kwargs):
    return decode_self_attention(*(case[n] for n in DECODE_ARGS), **kwargs)


def _decode_ref(case):
    return decode_self_attention_ref(*(case[n] for n in DECODE_ARGS))


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_decode_kernel_matches_reference(dtype, num_splits):
    case = _decode_case(dtype)
    ours, ref = _clone(case), _clone(case)
    out = _decode(ours, num_splits=num_splits, block_n=4)
    ref_out = _decode_ref(ref)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref_out, **OUT_TOL[dtype])
    # Both wrote the same cache entries (and only those: test_decode_kernel_writes_...).
    assert torch.equal(ours["k_cache"], ref["k_cache"]) and torch.equal(ours["v_cache"], ref["v_cache"])


def test_decode_kernel_splits_agree():
    """1 split, several, and more splits than a row has blocks (empty splits): one result."""
    case = _decode_case()
    outs = [_decode(_clone(case), num_splits=n, block_n=4) for n in (1, 2, 5)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=1e-6, rtol=1e-6)


def _sdpa(case, r):
    """Row r's plain attention by torch: its valid prefix and the new entry."""
    slot, pos = int(case["slots"][r]), int(case["positions"][r])
    keys = torch.cat([case["k_cache"][slot, :, :pos], case["k_new"][r, :, None]], dim=1).float()  # [H, pos + 1, D]
    values = torch.cat([case["v_cache"][slot, :, :pos], case["v_new"][r, :, None]], dim=1).float()
    q = case["q"][r, :, None].float()  # [H, 1, D]
    return torch.nn.functional.scaled_dot_product_attention(q, keys, values, scale=case["scale"])[:, 0]


def test_decode_without_injection_is_plain_attention():
    """b = 0, or any b on a row that is its own source: the kernel and the reference are
    torch's scaled_dot_product_attention over each row's valid positions (0, 1, 7, capacity - 1)."""
    case = _decode_case()
    own_source = case["src_row"] == torch.arange(7, device=DEVICE)
    case["self_b"] = torch.where(own_source, 0.7, 0.0)
    expected = torch.stack([_sdpa(case, r) for r in range(7)])
    torch.testing.assert_close(_decode(_clone(case), num_splits=3, block_n=4), expected, **F32)
    torch.testing.assert_close(_decode_ref(_clone(case)), expected, **F32)


def test_decode_full_injection_of_an_identical_row_is_the_source():
    """b = 1 on a target that is its source's copy (q, new K/V, cache): the source's output.
    And b = 1 in general uses the source's probabilities with the target's own values."""
    case = _decode_case()
    for name in ("q", "k_new", "v_new"):
        case[name][1] = case[name][0]
    case["k_cache"][0] = case["k_cache"][3]  # row 1's slot holds row 0's cache
    case["v_cache"][0] = case["v_cache"][3]
    case["self_b"][1] = 1.0
    out = _decode(_clone(case), num_splits=3, block_n=4)
    torch.testing.assert_close(out[1], out[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1], _sdpa(case, 0), **F32)
    # Row 3 (b = 1, its own cache and values): softmax of the source's scores over row 3's values.
    last = CAPACITY - 1
    src_keys = torch.cat([case["k_cache"][5, :, :last], case["k_new"][2, :, None]], dim=1)  # [H, CAPACITY, D]
    src_scores = torch.einsum("hd,hnd->hn", case["q"][2], src_keys) * case["scale"]
    values = torch.cat([case["v_cache"][1, :, :last], case["v_new"][3, :, None]], dim=1)
    torch.testing.assert_close(out[3], torch.einsum("hn,hnd->hd", torch.softmax(src_scores, -1), values), **F32)


def test_decode_kernel_writes_kv_at_slot_and_position_only():
    case = _decode_case(torch.float32, cache_dtype=torch.float16)  # the write converts to the cache's dtype
    ours = _clone(case)
    _decode(ours, num_splits=2, block_n=4)
    changed = (ours["k_cache"] != case["k_cache"]) | (ours["v_cache"] != case["v_cache"])  # [S, H, P, D]
    expected = torch.zeros_like(changed)
    for r, (slot, pos) in enumerate(zip(case["slots"].tolist(), case["positions"].tolist())):
        expected[slot, :, pos] = True
        assert torch.equal(ours["k_cache"][slot, :, pos], case["k_new"][r].half())
        assert torch.equal(ours["v_cache"][slot, :, pos], case["v_new"][r].half())
    assert torch.equal(changed, expected)


def test_decode_reference_rejects_a_source_at_another_position():
    case = _decode_case()
    case["positions"][1] = 6  # row 1 injects row 0 (position 7) with b = 0.5
    with pytest.raises(ValueError, match="row 1 .position 6. injects its source row 0 at position 7"):
        _decode_ref(case)
    case = _decode_case()
    case["positions"][6] = CAPACITY
    with pytest.raises(ValueError, match=f"position {CAPACITY} outside"):
        _decode_ref(case)


def test_decode_launcher_rejects_bad_arguments():
    case = _decode_case()
    with pytest.raises(ValueError, match=r"v_cache has shape"):
        _decode({**case, "v_cache": case["v_cache"][:, :, :5]})
    with pytest.raises(ValueError, match="slots is torch.float32"):
        _decode({**case, "slots": case["slots"].float()})
    with pytest.raises(ValueError, match="contiguous last axis"):
        _decode({**case, "k_cache": case["k_cache"].transpose(2, 3).contiguous().transpose(2, 3)})
    with pytest.raises(ValueError, match="block_n must be a power of two"):
        _decode(case, block_n=6)


# ---------------------------------------------------------------- compiled for a GPU, without one

_COMPILE_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from editgen.kernels import _launch
    from editgen.kernels.cross_attention import _cross_plan
    from editgen.kernels.decode_attention import _decode_plan

    # Meta tensors: shapes, dtypes and strides, no data; the launches are only compiled.
    _launch.same_device = lambda **tensors: torch.device("meta")
    TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int64: "i64"}

    def compile_launch(launch, arch):
        args, signature, constexprs = list(launch.args), {}, {}
        for param in launch.kernel.params:
            if param.is_constexpr:
                signature[param.name], constexprs[param.name] = "constexpr", launch.constexprs[param.name]
                continue
            a = args.pop(0)
            signature[param.name] = ("*" + TYPES[a.dtype] if isinstance(a, torch.Tensor)
                                     else "fp32" if isinstance(a, float) else "i32")
        triton.compile(ASTSource(launch.kernel, signature, constexprs), target=GPUTarget("cuda", arch, 32))

    e = lambda *shape, dtype=torch.float32: torch.empty(shape, dtype=dtype, device="meta")
    i64 = lambda *shape: e(*shape, dtype=torch.int64)
    R, H, D, T, S, P = 4, 16, 64, 64, 8, 1536
    for arch in (90,):  # the H100 / H200
        for dt in (torch.float16, torch.bfloat16):
            launches = ()
            for splits in (4, 1):  # split + reduce, and the fused one-split kernel
                plan, _ = _decode_plan(e(R, H, D, dtype=dt), e(R, H, D, dtype=dt), e(R, H, D, dtype=dt),
                                       e(S, H, P, D, dtype=dt), e(S, H, P, D, dtype=dt), i64(R), i64(R), i64(R),
                                       e(R), D**-0.5, splits, 64)
                launches += plan
            for probs in (None, e(R, H, T)):
                cross, _ = _cross_plan(e(R, H, D, dtype=dt), e(R, H, T, D, dtype=dt), e(R, H, T, D, dtype=dt),
                                       e(R, T), i64(R), e(R), e(R, H, T), e(R, T, T), e(R, T), e(R, T), e(R, T),
                                       e(R), D**-0.5, probs)
                launches += (cross,)
            for launch in launches:
                compile_launch(launch, arch)
                print(arch, dt, launch.kernel.fn.__name__, launch.constexprs, flush=True)
""")


@pytest.mark.slow
def test_kernels_compile_for_cuda_without_a_gpu(tmp_path):
    """The interpreter does not type-check like the compiler (loop-carried types, globals,
    constexprs): compile every launch to a cubin for sm_90 at MusicGen's sizes (H 16, D 64,
    T 64, capacity 1536), fp16 and bf16 (~1 s each). In a fresh process: kernels decorated
    under TRITON_INTERPRET=1 cannot be compiled."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a real compile each run, nothing left in ~/.triton
    done = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-4000:]
    assert len(done.stdout.splitlines()) == 2 * 5  # per dtype: split, reduce, fused split, cross x2


# ---------------------------------------------------------------- GPU: MusicGen sizes, timed

@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (the compiled kernels); CPU runs the interpreter tests")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_kernels_at_musicgen_sizes(dtype):
    """musicgen-medium's attention sizes (24 heads, head_dim 64, T 64): cross-attention of
    10 rows, decode of 8 rows up to the end of a 30 s edit (position 1503, capacity 1536).
    The same assertions as above on real launches, and each call's time (min of repeats)
    printed with the bytes it reads."""
    g = torch.Generator().manual_seed(0)
    R, H, D, T, P = 8, 24, 64, 64, 1536
    cross = _cross_case("refine", heads=H, T=T, D=D, dtype=dtype, groups=2)  # 10 rows
    out, p = _cross(cross, probs=torch.empty(10, H, T, device=DEVICE))
    ref_out, ref_p = _cross_ref(cross)
    torch.testing.assert_close(p, ref_p, **F32)
    torch.testing.assert_close(out.float(), ref_out, **OUT_TOL[dtype])

    dec = dict(q=_randn(g, R, H, D, dtype=dtype), k_new=_randn(g, R, H, D, dtype=dtype),
               v_new=_randn(g, R, H, D, dtype=dtype), k_cache=_randn(g, R, H, P, D, dtype=dtype),
               v_cache=_randn(g, R, H, P, D, dtype=dtype), slots=torch.randperm(R, generator=g).to(DEVICE),
               positions=torch.tensor([1503, 1503, 1503, 1503, 700, 700, 1, 0], device=DEVICE),
               src_row=torch.tensor([0, 0, 0, 3, 4, 4, 6, 7], device=DEVICE),
               self_b=torch.tensor([0.0, 0.5, 1.0, 0.0, 0.0, 0.25, 0.0, 0.0], device=DEVICE), scale=D**-0.5)
    ours, ref = _clone(dec), _clone(dec)
    out = _decode(ours)
    torch.testing.assert_close(out.float(), _decode_ref(ref), **OUT_TOL[dtype])
    assert torch.equal(ours["k_cache"], ref["k_cache"]) and torch.equal(ours["v_cache"], ref["v_cache"])

    def best_us(fn, repeats=50):
        fn()
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return min(times) * 1e6

    size = torch.finfo(dtype).bits // 8
    # Bytes the decode reads: each row's K and V over its positions, and its source's K where b != 0.
    reads = sum(pos * H * D * size * (3 if b else 2) for pos, b in zip(dec["positions"].tolist(), dec["self_b"].tolist()))
    print(f"\n{dtype}: cross {best_us(lambda: _cross(cross)):.1f} us ({2 * 10 * H * T * D * size / 1e6:.2f} MB of K/V), "
          f"decode {best_us(lambda: _decode(ours)):.1f} us ({reads / 1e6:.1f} MB of cache)")


@pytest.mark.skipif(CUDA, reason="the interpreter runs only without CUDA here")
def test_the_interpreter_speed_up_is_installed():
    """tests/triton_interpreter.py knows this Triton (constraints.txt pins it): were it to stop
    applying after an upgrade, the kernel tests would still pass, at ~1.4x the time."""
    from tests.triton_interpreter import speed_up

    assert speed_up()

