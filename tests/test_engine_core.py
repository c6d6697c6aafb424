"""The engine core on the numpy fake backend (no torch, milliseconds): continuous
batching, cancellation, failures, admission, and the loop's invariants."""

from __future__ import annotations

import numpy as np
import pytest

from editgen.engine.backends.fake import FakeBackend
from editgen.engine.core import EngineCore
from editgen.engine.edit import EditBatch, EditSpec
from editgen.engine.jobs import compile_specs, edit_job
from editgen.engine.options import GenerationOptions
from editgen.engine.requests import Request, State
from editgen.errors import InvalidRequestError


@pytest.fixture
def backend():
    return FakeBackend()


def plain(backend, prompt="lofi piano", seconds=2.0, seed=1, **kw):
    return Request(backend.shapes, [backend.tokenizer.encode(prompt)], GenerationOptions(seconds=seconds, seed=seed, **kw))


def edited(backend, seconds=2.0, seed=1):
    plans = compile_specs(backend, [EditSpec(source="lofi piano with drums", target="lofi guitar with drums")])
    batch = EditBatch(plans, cfg=True, num_heads=backend.shapes.num_heads)
    return Request(backend.shapes, [plans[0].source, plans[0].target], GenerationOptions(seconds=seconds, seed=seed),
                   edits=batch)


def alone(backend, make):
    return EngineCore(backend, max_rows=8).run(make()).codes()


def test_codes_do_not_depend_on_who_joins_and_leaves(backend):
    """Requests submitted at random steps, finishing at different times: each one's codes
    equal its codes alone (the fake's logits read the whole cached history of the row,
    its text and, for edited rows, its source row: a slot, position or src_row mixed up
    between requests changes them)."""
    makers = [lambda s=s: plain(backend, "lofi piano", 1.0 + 0.3 * s, seed=s) for s in range(4)]
    makers += [lambda s=s: edited(backend, 1.5 + 0.2 * s, seed=10 + s) for s in range(3)]
    want = [alone(backend, m) for m in makers]
    rng = np.random.default_rng(0)
    core = EngineCore(backend, max_rows=12)
    requests = [m() for m in makers]
    start = sorted(rng.integers(0, 60, len(requests)))
    order = rng.permutation(len(requests))
    step = 0
    while any(not r.done for r in requests):
        for i, s in zip(order, start):
            if s == step:
                core.submit(requests[i])
        core.step()
        step += 1
    assert core.steps_run < sum(r.steps for r in requests)  # requests did share steps
    for request, codes in zip(requests, want):
        np.testing.assert_array_equal(request.codes(), codes)


def test_every_running_request_shares_one_backend_step(backend):
    core = EngineCore(backend, max_rows=16)
    a, b, c = plain(backend, seed=1), edited(backend, seed=2), plain(backend, "jazz", seed=3)
    for r in (a, b, c):
        core.submit(r)
    core.step()
    assert backend.steps == 1 and core.active_rows == a.rows + b.rows + c.rows
    assert [r.step for r in (a, b, c)] == [1, 1, 1]


def test_cancel_frees_the_slots_before_the_next_step(backend):
    core = EngineCore(backend, max_rows=8)
    keep, drop = plain(backend, seed=1), edited(backend, seed=2)
    core.submit(keep)
    core.submit(drop)
    for _ in range(5):
        core.step()
    seen = []
    real_step = backend.step
    backend.step = lambda batch: seen.append(batch.slots.copy()) or real_step(batch)
    dropped_slots = drop.slots.copy()
    core.cancel(drop)
    assert drop.state is State.CANCELLED and core.active_rows == keep.rows
    assert not backend.slots.admitted[dropped_slots].any()  # released in the backend too
    core.step()
    assert set(seen[-1].tolist()) == set(keep.slots.tolist())
    # The freed slots are handed to the next request, whose codes are its own.
    late = plain(backend, "ambient", seed=5)
    core.submit(late)
    while not keep.done or not late.done:
        core.step()
    np.testing.assert_array_equal(late.codes(), alone(backend, lambda: plain(backend, "ambient", seed=5)))


def test_cancel_a_waiting_request(backend):
    core = EngineCore(backend, max_rows=4)
    running, waiting = edited(backend), plain(backend)
    core.submit(running)
    core.submit(waiting)
    core.step()
    assert waiting.state is State.WAITING  # 4 rows are taken
    core.cancel(waiting)
    assert waiting.state is State.CANCELLED and not core.waiting


def test_requests_wait_until_their_rows_fit_first_come_first_served(backend):
    core = EngineCore(backend, max_rows=4)
    first = plain(backend, seconds=0.5, seed=1)  # 2 rows
    big = edited(backend, seconds=0.5, seed=2)  # 4 rows: waits for first to finish
    small = plain(backend, seconds=0.5, seed=3)  # 2 rows: fits now, but comes after big
    for r in (first, big, small):
        core.submit(r)
    core.step()
    assert (first.state, big.state, small.state) == (State.RUNNING, State.WAITING, State.WAITING)
    while not first.done:
        core.step()
    core.step()
    assert big.state is State.RUNNING and small.state is State.WAITING
    while core.has_work:
        core.step()
    assert all(r.state is State.FINISHED for r in (first, big, small))


def test_a_backend_error_fails_only_that_steps_requests(backend):
    core = EngineCore(backend, max_rows=8)
    a, b = plain(backend, seed=1), plain(backend, seed=2)
    core.submit(a)
    core.submit(b)
    core.step()
    backend.fail_at_step = backend.steps + 1
    ended = core.step()
    assert set(ended) == {a, b} and a.state is State.FAILED and "fake backend failure" in str(a.error)
    assert core.active_rows == 0 and not backend.slots.admitted.any()
    after = core.run(plain(backend, seed=3))  # the engine goes on
    np.testing.assert_array_equal(after.codes(), alone(backend, lambda: plain(backend, seed=3)))


def test_a_hook_error_fails_only_its_request(backend):
    core = EngineCore(backend, max_rows=8)
    ok = plain(backend, seed=1)

    def broken(position, codes):
        raise InvalidRequestError("captured maps cover 3 steps")

    bad = Request(backend.shapes, [backend.tokenizer.encode("x")], GenerationOptions(seconds=1.0), overrides=[broken])
    core.submit(ok)
    core.submit(bad)
    core.step()
    assert bad.state is State.FAILED and ok.state is State.RUNNING
    with pytest.raises(InvalidRequestError, match="captured maps"):
        EngineCore(backend, max_rows=8).run(
            Request(backend.shapes, [backend.tokenizer.encode("x")], GenerationOptions(seconds=1.0), overrides=[broken]))


def test_a_request_larger_than_the_engine_is_refused(backend):
    core = EngineCore(backend, max_rows=2)
    with pytest.raises(InvalidRequestError, match="needs 4 rows.*at most 2"):
        core.submit(edited(backend))


def test_maps_reach_only_the_requests_that_record_them(backend):
    job = edit_job(backend, [EditSpec(source="lofi piano", target="lofi guitar")], GenerationOptions(seconds=1.0))
    core = EngineCore(backend, max_rows=8)
    seen = []
    real_step = backend.step
    backend.step = lambda batch: seen.append(batch.want_maps.copy()) or real_step(batch)
    other = plain(backend, seed=4)
    core.submit(other)
    core.submit(job.request)
    while core.has_work:
        core.step()
    # other: 2 rows, no maps; the edit: source + target conditional rows want maps, null rows do not.
    assert seen[0].tolist() == [False, False, True, True, False, False]
    result = job.result()
    assert result.mean_maps.shape == (job.request.steps, 2, backend.shapes.max_text_tokens)
    # The source row (never edited) got its own softmax map; the target row its edited one.
    np.testing.assert_allclose(result.mean_maps[:, 0].sum(-1), 1.0, rtol=1e-5)
    assert not np.allclose(result.mean_maps[:, 1], result.mean_maps[:, 0])
