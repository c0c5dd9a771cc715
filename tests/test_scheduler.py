"""The scheduler: engine thread, newest request per document wins, cancellation reaches the engine.

No test here waits on the clock: a fake generation runs until the test releases it or its token
is cancelled, and reports both through events; the debounce waits on a sleep the test controls.
"""
from __future__ import annotations

import asyncio
import threading

import pytest

from engine.api import CancelToken, Cancelled
from lsp_server.scheduler import LatencyWindow, Scheduler, Superseded, percentile

HANG_S = 60  # only a hang takes this long


class Gated:
    """A fake generation: decode steps that block until `release` is set, checking the token between them."""

    def __init__(self, result: object = "done") -> None:
        self.result = result
        self.started, self.release, self.cancelled = threading.Event(), threading.Event(), threading.Event()
        self.runs = 0

    def __call__(self, token: CancelToken) -> object:
        self.runs += 1
        self.started.set()
        while not self.release.wait(0.001):  # one "decode step" per millisecond until released
            if token.cancelled:
                self.cancelled.set()
                raise Cancelled()
        return self.result


async def wait_for(event: threading.Event) -> None:
    """Await a thread's event without blocking the loop (a hang fails after HANG_S)."""
    assert await asyncio.to_thread(event.wait, HANG_S), "the engine thread never got there"


async def test_runs_off_the_event_loop_and_returns_the_result():
    scheduler = Scheduler()
    loop_thread = threading.get_ident()
    seen = []
    result = await scheduler.run("a", lambda token: seen.append(threading.get_ident()) or 42)
    assert result == 42
    assert seen and seen[0] != loop_thread


async def test_newer_request_for_the_same_document_supersedes_the_older():
    scheduler = Scheduler()
    old, new = Gated("old"), Gated("new")
    new.release.set()
    older = asyncio.ensure_future(scheduler.run("a", old))
    await wait_for(old.started)
    assert await scheduler.run("a", new) == "new"
    with pytest.raises(Superseded):
        await older
    assert old.cancelled.is_set() and not old.release.is_set(), "the engine stopped the older mid-generation"


async def test_an_identical_request_shares_the_job_in_flight_and_a_different_one_supersedes_it():
    scheduler = Scheduler()
    shared = Gated(20)
    inline = asyncio.ensure_future(scheduler.run("a", shared, same=("text", 3, 4)))
    await wait_for(shared.started)
    completion = asyncio.ensure_future(scheduler.run("a", shared, same=("text", 3, 4)))
    await asyncio.sleep(0)  # the second request joins (one loop turn: no waiting on the clock)
    shared.release.set()
    assert await asyncio.gather(inline, completion) == [20, 20]
    assert shared.runs == 1 and not shared.cancelled.is_set()  # one engine run, nothing cancelled

    first, typed_on = Gated(), Gated(2)
    typed_on.release.set()
    pending = asyncio.ensure_future(scheduler.run("a", first, same=("text", 3, 4)))
    await wait_for(first.started)
    assert await scheduler.run("a", typed_on, same=("text!", 3, 5)) == 2  # the user typed on
    with pytest.raises(Superseded):
        await pending
    assert first.cancelled.is_set()


async def test_a_shared_job_stops_only_when_every_request_for_it_is_cancelled():
    scheduler = Scheduler()
    job = Gated(60)
    one = asyncio.ensure_future(scheduler.run("a", job, same="k"))
    await wait_for(job.started)
    two = asyncio.ensure_future(scheduler.run("a", Gated(), same="k"))
    await asyncio.sleep(0)  # `two` joins the job in flight
    one.cancel()  # $/cancelRequest for the first request
    await asyncio.gather(one, return_exceptions=True)
    assert not job.cancelled.is_set(), "the job runs on for the second request"
    job.release.set()
    assert await two == 60 and not job.cancelled.is_set()
    assert one.cancelled() and job.runs == 1

    job = Gated()
    three = asyncio.ensure_future(scheduler.run("a", job, same="k"))
    await wait_for(job.started)
    four = asyncio.ensure_future(scheduler.run("a", Gated(), same="k"))
    await asyncio.sleep(0)
    three.cancel()
    four.cancel()
    await asyncio.gather(three, four, return_exceptions=True)
    await wait_for(job.cancelled)  # the engine stopped before it was released
    assert not job.release.is_set()
    last = Gated(1)
    last.release.set()
    assert await scheduler.run("a", last, same="k") == 1  # and the scheduler is usable


async def test_other_documents_are_not_cancelled():
    scheduler = Scheduler()
    a, b = Gated(5), Gated(3)
    first = asyncio.ensure_future(scheduler.run("a", a))
    second = asyncio.ensure_future(scheduler.run("b", b))
    await wait_for(a.started)
    a.release.set()
    b.release.set()
    assert await asyncio.gather(first, second) == [5, 3]
    assert not a.cancelled.is_set() and not b.cancelled.is_set()


async def test_cancelling_the_awaiting_task_cancels_the_engine_token():
    scheduler = Scheduler()
    job = Gated()
    task = asyncio.ensure_future(scheduler.run("a", job))
    await wait_for(job.started)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the engine thread stops at its next step and is free for the next request
    await wait_for(job.cancelled)
    after = Gated(1)
    after.release.set()
    assert await scheduler.run("a", after) == 1
    assert not job.release.is_set()


async def test_a_request_superseded_while_queued_never_runs():
    scheduler = Scheduler()
    ran = []
    busy = Gated(10)
    blocker = asyncio.ensure_future(scheduler.run("busy", busy))
    await wait_for(busy.started)  # the engine thread is taken: what follows queues
    queued = asyncio.ensure_future(scheduler.run("a", lambda token: ran.append("old") or "old"))
    await asyncio.sleep(0)
    newest = asyncio.ensure_future(scheduler.run("a", lambda token: ran.append("new") or "new"))
    await asyncio.sleep(0)
    busy.release.set()
    assert await newest == "new"
    with pytest.raises(Superseded):
        await queued
    assert await blocker == 10
    assert ran == ["new"]


class ManualSleep:
    """A debounce sleep that returns only when the test says the time has passed."""

    def __init__(self) -> None:
        self.waiting: list[tuple[float, asyncio.Event]] = []
        self.called = asyncio.Condition()

    async def __call__(self, seconds: float) -> None:
        passed = asyncio.Event()
        self.waiting.append((seconds, passed))
        async with self.called:
            self.called.notify_all()
        await passed.wait()

    async def until(self, count: int) -> None:
        """Until `count` requests wait out the debounce."""
        async with self.called:
            await asyncio.wait_for(self.called.wait_for(lambda: len(self.waiting) >= count), HANG_S)

    def elapse(self) -> None:
        for _, passed in self.waiting:
            passed.set()


async def test_debounce_drops_requests_replaced_within_the_window():
    sleep = ManualSleep()
    scheduler = Scheduler(debounce_s=0.05, sleep=sleep)
    ran = []
    first = asyncio.ensure_future(scheduler.run("a", lambda token: ran.append(1) or 1))
    await sleep.until(1)
    assert [s for s, _ in sleep.waiting] == [0.05], "the first request waits out the debounce"
    second = asyncio.ensure_future(scheduler.run("a", lambda token: ran.append(2) or 2))
    await sleep.until(2)
    assert ran == []  # replaced within the window: nothing ran yet
    sleep.elapse()
    assert await second == 2
    with pytest.raises(Superseded):
        await first
    assert ran == [2]


async def test_a_request_not_replaced_within_the_debounce_runs():
    sleep = ManualSleep()
    scheduler = Scheduler(debounce_s=0.05, sleep=sleep)
    pending = asyncio.ensure_future(scheduler.run("a", lambda token: "ran"))
    await sleep.until(1)
    assert not pending.done()
    sleep.elapse()
    assert await pending == "ran"


async def test_cancel_by_document_stops_its_request():
    scheduler = Scheduler()
    job = Gated()
    task = asyncio.ensure_future(scheduler.run("a", job))
    await wait_for(job.started)
    scheduler.cancel("a")
    with pytest.raises(Superseded):
        await task
    assert job.cancelled.is_set() and not job.release.is_set()


@pytest.mark.parametrize("values, q, expected", [
    ([], 50, None),
    ([7.0], 95, 7.0),
    ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
    ([float(i) for i in range(1, 101)], 95, 95.0),
    ([float(i) for i in range(1, 101)], 50, 50.0),
])
def test_percentile_is_nearest_rank(values, q, expected):
    assert percentile(values, q) == expected


def test_latency_window_keeps_the_last_hundred():
    window = LatencyWindow(100)
    for ms in range(1000, 0, -1):  # 1000 .. 1; the last hundred are 100 .. 1
        window.add(float(ms))
    assert window.summary() == {"count": 100, "p50_ms": 50.0, "p95_ms": 95.0}


async def test_while_the_model_is_slower_than_the_typing_a_superseded_request_never_reaches_it():
    sleep = ManualSleep()
    scheduler = Scheduler(adaptive=True, sleep=sleep)
    scheduler.pacing.typing_s, scheduler.pacing.model_s = 0.1, 2.0  # waits 150 ms for the next key
    ran: list[str] = []
    first = asyncio.ensure_future(scheduler.run("a", lambda token: ran.append("first") or 1))
    await sleep.until(1)  # the first is waiting for a newer keystroke
    pending = asyncio.ensure_future(scheduler.run("a", lambda token: ran.append("second") or 2))
    await sleep.until(2)
    sleep.elapse()
    second = await pending
    with pytest.raises(Superseded):
        await first
    assert (second, ran) == (2, ["second"])
    assert scheduler.pacing.model_s < 2.0  # the answered run's time entered the average


async def test_a_fast_model_or_a_fixed_debounce_replaces_the_adaptive_wait():
    fast = Scheduler(adaptive=True)
    fast.pacing.typing_s, fast.pacing.model_s = 0.15, 0.01
    assert fast.pacing.arrived("b", 0.0) == 0.0 and await fast.run("a", lambda token: 1) == 1  # no wait
    fixed = Scheduler(debounce_s=0.0, adaptive=False)
    fixed.pacing.typing_s, fixed.pacing.model_s = 0.1, 2.0
    assert await fixed.run("a", lambda token: 3) == 3
