"""Sampling on the backend's device (contract.SamplingBatch, backends/device_sampling.py)
against the host's sampler, and the engine core's plumbing of it and of reduced maps, on
torch CPU tensors and the numpy fake backend."""

from __future__ import annotations

import numpy as np
import pytest

from editgen.engine.backends.fake import FakeBackend
from editgen.engine.contract import SamplingBatch, StepOutputs
from editgen.engine.core import EngineCore
from editgen.engine.edit import EditBatch, EditSpec
from editgen.engine.jobs import compile_specs
from editgen.engine.hooks import MeanMaps, RowMaps
from editgen.engine.options import GenerationOptions
from editgen.engine.requests import Request
from editgen.engine.sampling import Sampler, classifier_free_guidance, pick_top_k, top_k_ids

torch = pytest.importorskip("torch")
from editgen.engine.backends.device_sampling import sample_codes  # noqa: E402

K, V = 4, 300


def _host(logits, cfg: bool, guidance: float, top_k: int, temperature: float, u):
    """One request's rows as Request.advance samples them (logits: its rows)."""
    if cfg:
        logits = classifier_free_guidance(logits, guidance)
    if top_k == 0:
        return logits.argmax(-1)
    return pick_top_k(logits, u, top_k, temperature)


# (rows_cond, cfg, guidance, top_k, temperature): greedy, top-1, small k, the default 250,
# k above the vocabulary, no guidance, temperatures around 1.
REQUESTS = [(1, True, 3.0, 250, 1.0), (2, True, 1.7, 5, 0.7), (1, False, 1.0, 250, 1.3), (2, True, 3.0, 0, 1.0),
            (1, True, 4.5, 1, 1.0), (1, False, 1.0, 10_000, 0.9), (3, True, 2.0, 40, 1.0), (1, False, 1.0, 0, 1.0),
            (1, False, 1.0, 3, 1.0)]


@pytest.mark.parametrize("seed", range(4))
def test_device_codes_equal_the_hosts(seed):
    """Requests of every kind in one SamplingBatch, rows in batch order: each request's codes
    equal what the host sampler picks from the same logits and uniforms."""
    rng = np.random.default_rng(seed)
    rows = sum(n * (2 if cfg else 1) for n, cfg, *_ in REQUESTS)
    logits = (rng.standard_normal((rows, K, V)) * 3).astype(np.float32)
    parts, want, row = [], [], 0
    for n, cfg, guidance, top_k, temperature in REQUESTS:
        if not cfg:  # equal maxima (no guidance to break them): argmax and the sort must agree on ties
            logits[row, 0, 3:10] = logits[row, 0].max() + 1
        u = np.zeros((n, K)) if top_k == 0 else rng.random((n, K))
        cond = np.arange(n) + row
        uncond = cond + n if cfg else cond
        parts.append((cond, uncond, np.full(n, guidance, np.float32), np.full(n, temperature), np.full(n, top_k), u))
        request_rows = 2 * n if cfg else n
        want.append(_host(logits[row: row + request_rows], cfg, guidance, top_k, temperature, u))
        row += request_rows
    sampling = SamplingBatch(*map(np.concatenate, zip(*parts)))
    got = sample_codes(torch.from_numpy(logits), sampling).numpy()
    np.testing.assert_array_equal(got, np.concatenate(want))


def test_ties_at_the_kth_value_go_to_the_lower_ids():
    """top_k_ids: the first k of a stable descending sort, also when argpartition had to
    choose among equal values; the device's sort picks the same ids."""
    scaled = np.zeros((3, 2, 50))
    scaled[..., ::3] = 1.0  # 17 equal maxima per row, k = 5 cuts through them
    scaled[1, 1, 40] = 2.0
    ids, values = top_k_ids(scaled, 5)
    np.testing.assert_array_equal(values, np.take_along_axis(scaled, ids, axis=-1))
    np.testing.assert_array_equal(ids[0, 0], [0, 3, 6, 9, 12])
    np.testing.assert_array_equal(ids[1, 1], [40, 0, 3, 6, 9])
    want = np.argsort(-scaled, axis=-1, kind="stable")[..., :5]
    np.testing.assert_array_equal(ids, want)
    _, dev = torch.sort(torch.from_numpy(scaled), dim=-1, descending=True, stable=True)
    np.testing.assert_array_equal(dev[..., :5].numpy(), want)


class DeviceSamplingFake(FakeBackend):
    """The fake backend sampling "on its device" with sample_codes, and reducing the maps
    when the batch allows it; records what each step asked for."""

    samples_on_device = True

    def __init__(self):
        super().__init__()
        self.asked = []  # (map_means_only, sampling rows) per step

    def step(self, batch):
        assert batch.sampling is not None
        self.asked.append((batch.map_means_only, batch.sampling.cond_rows.size))
        out = super().step(batch)
        maps = out.cross_attn
        if batch.map_means_only:
            maps = maps.mean(axis=(0, 2), keepdims=True)  # [1, M, 1, T]
        codes = sample_codes(torch.from_numpy(out.logits), batch.sampling).numpy()
        return StepOutputs(None, maps, codes=codes)


def _requests(backend, recorders_for_edit=None):
    """A plain request (top-k 250, guidance 3), a greedy one without guidance, and an edit
    with another seed, temperature and k, all with maps recorded for plots."""
    tok = backend.tokenizer.encode
    s = backend.shapes
    plans = compile_specs(backend, [EditSpec(source="lofi piano with drums", target="lofi guitar with drums")])
    edits = EditBatch(plans, cfg=True, num_heads=s.num_heads)
    steps = lambda o: s.steps_for_frames(o.frames(s))  # noqa: E731
    opts = [GenerationOptions(seconds=1.0, seed=1), GenerationOptions(seconds=0.6, seed=2, guidance_scale=1.0, greedy=True),
            GenerationOptions(seconds=0.8, seed=3, top_k=7, temperature=0.8)]
    maps = [MeanMaps(steps(o), n, s.max_text_tokens) for o, n in zip(opts, (1, 1, 2))]
    edit_recorders = recorders_for_edit(steps(opts[2])) if recorders_for_edit else [maps[2]]
    return [Request(s, [tok("lofi piano")], opts[0], recorders=[maps[0]]),
            Request(s, [tok("dub techno")], opts[1], recorders=[maps[1]]),
            Request(s, [plans[0].source, plans[0].target], opts[2], edits=edits, recorders=edit_recorders)], maps


def _run_together(backend, requests, join_at=(0, 3, 5)):
    core = EngineCore(backend, max_rows=16)
    pending = list(zip(join_at, requests))
    while pending or core.has_work:
        while pending and pending[0][0] <= core.steps_run:
            core.submit(pending.pop(0)[1])
        core.step()
    return [r.codes() for r in requests]


def test_engine_core_with_device_sampling_equals_host_sampling():
    """Three requests of different options joining at different steps: with the backend
    sampling, every request's codes and plot maps equal the host-sampling run's."""
    host_requests, host_maps = _requests(FakeBackend())
    want = _run_together(FakeBackend(), host_requests)
    device = DeviceSamplingFake()
    requests, maps = _requests(device)
    got = _run_together(device, requests)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    for g, w in zip(maps, host_maps):
        np.testing.assert_allclose(g.maps, w.maps, atol=1e-6, rtol=0)
    assert all(means for means, _ in device.asked)  # only plot maps were wanted: reduced on the "device"
    assert max(rows for _, rows in device.asked) == 1 + 1 + 2  # every request's conditional rows


def test_full_maps_are_returned_when_a_request_records_them():
    """A capture-style recorder (RowMaps: every layer and head) in the step: the batch does
    not allow reduced maps, and the recorder gets them in full."""
    device = DeviceSamplingFake()
    s = device.shapes
    full = []
    requests, _ = _requests(device, lambda steps: full.append(RowMaps(steps, 0, s.num_layers, s.num_heads,
                                                                          s.max_text_tokens, np.float32)) or full)
    _run_together(device, [requests[0], requests[2]], join_at=(0, 3))  # plain (1 row), then the edit (2)
    plain_alone = [means for means, rows in device.asked if rows == 1]
    with_edit = [means for means, rows in device.asked if rows >= 2]
    assert len(plain_alone) >= 3 and all(plain_alone)
    assert with_edit and not any(with_edit)
    assert full[0].maps.shape[1:] == (s.num_layers, s.num_heads, s.max_text_tokens) and np.abs(full[0].maps).sum() > 0


def test_sampler_draw_is_what_call_consumes():
    """Sampler.__call__ = draw + pick_top_k: a device-sampling run consumes each stream as
    the host run does (same uniforms at every step)."""
    a = Sampler(2, seed=5, top_k=10, temperature=1.0, greedy=False)
    b = Sampler(2, seed=5, top_k=10, temperature=1.0, greedy=False)
    logits = np.random.default_rng(0).standard_normal((2, K, V)).astype(np.float32)
    for _ in range(3):
        np.testing.assert_array_equal(a(logits), pick_top_k(logits, b.draw(K), 10, 1.0))
    assert Sampler(1, seed=0, top_k=5, temperature=1.0, greedy=True).draw(K) is None


def test_a_backend_returning_logits_against_its_flag_fails_the_step():
    """The step's uniforms were drawn for the backend to use: logits instead of codes would
    make the host draw again and shift every row's stream, so the step's requests fail."""

    class Confused(FakeBackend):
        samples_on_device = True  # ... and returns logits anyway

    backend = Confused()
    requests, _ = _requests(backend)
    core = EngineCore(backend, max_rows=16)
    core.submit(requests[0])
    core.step()
    assert requests[0].state.value == "failed" and "samples_on_device" in str(requests[0].error)
