"""Batch invariance on the real backends: a request's codes (sampling, fixed seed) are
bit-identical whether it runs alone or with other requests joining and leaving at any
step; 8 s clips, several seeds, ORT fp32 and int8 (the standard step, and the CPU int8
step with its int8 K/V cache) and the torch backend (random:tiny).
Plus the contract: nothing O(cache) crosses the backend boundary per step."""

from __future__ import annotations

import numpy as np
import pytest

from editgen.engine.backends.int8_step_backend import Int8StepBackend
from editgen.engine.backends.ort_backend import OrtBackend
from editgen.engine.core import EngineCore, StepObserver
from editgen.engine.edit import EditSpec
from editgen.engine.jobs import capture_job, edit_job
from editgen.engine.options import GenerationOptions
from editgen.engine.jobs import generate_job
from tests.conftest import torch_backend

SECONDS = 8.0
SRC = "lofi piano with warm drums"
SEEDS = (1, 2, 3)


def run_schedule(core, plan: dict, *, cancel_at: int, cancelled) -> None:
    """Steps `core` until it is idle: before step k the jobs plan[k] are submitted, and at
    step cancel_at the job `cancelled` is cancelled."""
    step = 0
    while step == 0 or core.has_work:
        for job in plan.get(step, []):
            core.submit(job.request)
        if step == cancel_at:
            core.cancel(cancelled.request)
        core.step()
        step += 1


@pytest.fixture(params=["ort-fp32", "ort-int8", "int8-step", "torch"])
def backend(request, exported):
    if request.param == "torch":
        yield torch_backend("random:tiny")
        return
    if request.param == "int8-step":  # the int8 export's default CPU engine: the step in C++
        with Int8StepBackend(exported("random:tiny", quantize="int8"), threads=2) as b:
            yield b
        return
    variant = {"quantize": "int8"} if request.param == "ort-int8" else {}
    with OrtBackend(exported("random:tiny", **variant), providers=["CPUExecutionProvider"], threads=1) as b:
        yield b


def jobs(backend):
    """Three edits and two plain generations of 8 s, one without guidance (one row: alone
    it is padded to two, as int8's one-row kernel rounds differently): the requests whose
    codes are checked."""
    out = [edit_job(backend, [EditSpec(source=SRC, target=t)], GenerationOptions(seconds=SECONDS, seed=s))
           for s, t in zip(SEEDS, ("lofi guitar with warm drums", "lofi organ with warm drums",
                                   "lofi piano with cold drums"))]
    out.append(generate_job(backend, "jazz trio", GenerationOptions(seconds=SECONDS, seed=4)))
    out.append(generate_job(backend, "solo flute", GenerationOptions(seconds=SECONDS, seed=5, guidance_scale=1.0)))
    return out


def others(backend):
    """Requests that come and go around them: short and long, plain, edit and capture."""
    return [generate_job(backend, "rock riff", GenerationOptions(seconds=1.0, seed=9)),
            edit_job(backend, [EditSpec(source="calm pads", target="calm strings")],
                     GenerationOptions(seconds=3.0, seed=8)),
            capture_job(backend, "fast techno", GenerationOptions(seconds=9.0, seed=7)),
            generate_job(backend, "reggae", GenerationOptions(seconds=2.0, seed=6, guidance_scale=1.0))]


def test_codes_do_not_depend_on_what_shares_the_step(backend):
    def codes(job):
        r = job.request
        return r.codes()

    alone = []
    for job in jobs(backend):
        EngineCore(backend, max_rows=8).run(job.request)
        alone.append(codes(job))

    core = EngineCore(backend, max_rows=24)
    checked, extra = jobs(backend), others(backend)
    cancelled = generate_job(backend, "to be cancelled", GenerationOptions(seconds=5.0, seed=5))
    plan = {0: [extra[0], checked[0]], 13: [checked[1], cancelled], 40: [extra[1]], 77: [checked[2]],
            150: [extra[2]], 201: [checked[3], extra[3]], 230: [checked[4]]}
    run_schedule(core, plan, cancel_at=120, cancelled=cancelled)
    assert cancelled.request.step == 120 - 13
    for job, want in zip(checked, alone):
        np.testing.assert_array_equal(codes(job), want)


def test_identity_edit_and_source_row_at_8_seconds(backend):
    """The README's guarantees on this backend: an identity edit reproduces the source, and
    the source row of a paired edit equals a plain generation of the source."""
    options = GenerationOptions(seconds=SECONDS, seed=11)
    identity = edit_job(backend, [EditSpec(source=SRC, target=SRC)], options)
    plain = generate_job(backend, SRC, options)
    for job in (identity, plain):
        EngineCore(backend, max_rows=8).run(job.request)
    codes = identity.request.codes()
    np.testing.assert_array_equal(codes[1], codes[0])
    np.testing.assert_array_equal(codes[0], plain.request.codes()[0])


class _Spy(StepObserver):
    """Records the bytes of every array crossing each backend step."""

    def __init__(self):
        self.sizes = []

    def after_step(self, batch, out, seconds, requests):
        arrays = [batch.slots, batch.positions, batch.codes, batch.want_maps, out.cross_attn]
        arrays += [a for a in (out.logits, out.codes) if a is not None]  # codes: a backend that samples
        arrays += [getattr(batch.edit, f) for f in batch.edit.__dataclass_fields__]
        if batch.sampling is not None:
            arrays += [getattr(batch.sampling, f) for f in batch.sampling.__dataclass_fields__]
        self.sizes.append(sum(a.nbytes for a in arrays))


def test_nothing_o_cache_crosses_the_step(backend):
    """Per-step traffic is the same at position 5 as at position 400: inputs and outputs
    do not grow with the cache, which stays in the backend."""
    spy = _Spy()
    job = edit_job(backend, [EditSpec(source=SRC, target="lofi guitar with warm drums")],
                   GenerationOptions(seconds=SECONDS, seed=1))
    EngineCore(backend, max_rows=8, observers=[spy]).run(job.request)
    assert len(spy.sizes) == job.request.steps > 400
    assert len(set(spy.sizes)) == 1, (spy.sizes[0], max(spy.sizes))
    pool = getattr(backend, "pool", None)
    if pool is not None:  # ORT: the pool re-strides at bucket boundaries only (1/8 headroom)
        assert pool.positions >= job.request.steps and pool.restrides <= 7
