"""The scheduler: engine thread, newest request per document wins, cancellation reaches the engine."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from engine.api import CancelToken, Cancelled
from lsp_server.scheduler import LatencyWindow, Scheduler, Superseded, percentile


def steps_job(steps: int, started: threading.Event | None = None, log: list | None = None):
    """A fake generation: `steps` decode steps of 10 ms, checking the token between them."""

    def job(token: CancelToken) -> int:
        if started is not None:
            started.set()
        for i in range(steps):
            if token.cancelled:
                if log is not None:
                    log.append(("cancelled at", i))
                raise Cancelled()
            time.sleep(0.01)
        return steps

    return job


async def test_runs_off_the_event_loop_and_returns_the_result():
    scheduler = Scheduler()
    loop_thread = threading.get_ident()
    seen = []
    result = await scheduler.run("a", lambda token: seen.append(threading.get_ident()) or 42)
    assert result == 42
    assert seen and seen[0] != loop_thread


async def test_newer_request_for_the_same_document_supersedes_the_older():
    scheduler = Scheduler()
    started, log = threading.Event(), []
    older = asyncio.ensure_future(scheduler.run("a", steps_job(100, started, log)))
    while not started.is_set():
        await asyncio.sleep(0.005)
    newer = await scheduler.run("a", steps_job(2))
    assert newer == 2
    with pytest.raises(Superseded):
        await older
    assert log and log[0][0] == "cancelled at" and log[0][1] < 100


async def test_an_identical_request_shares_the_job_in_flight_and_a_different_one_supersedes_it():
    scheduler = Scheduler()
    started, log, runs = threading.Event(), [], []

    def job(token):
        runs.append(1)
        return steps_job(20, started, log)(token)

    inline = asyncio.ensure_future(scheduler.run("a", job, same=("text", 3, 4)))
    while not started.is_set():
        await asyncio.sleep(0.005)
    completion = asyncio.ensure_future(scheduler.run("a", job, same=("text", 3, 4)))
    assert await asyncio.gather(inline, completion) == [20, 20]
    assert len(runs) == 1 and not log  # one engine run, nothing cancelled

    started.clear()
    first = asyncio.ensure_future(scheduler.run("a", steps_job(100, started, log), same=("text", 3, 4)))
    while not started.is_set():
        await asyncio.sleep(0.005)
    assert await scheduler.run("a", steps_job(2), same=("text!", 3, 5)) == 2  # the user typed on
    with pytest.raises(Superseded):
        await first
    assert log and log[0][0] == "cancelled at"


async def test_a_shared_job_stops_only_when_every_request_for_it_is_cancelled():
    scheduler = Scheduler()
    started, log = threading.Event(), []
    one = asyncio.ensure_future(scheduler.run("a", steps_job(60, started, log), same="k"))
    while not started.is_set():
        await asyncio.sleep(0.005)
    two = asyncio.ensure_future(scheduler.run("a", steps_job(60), same="k"))
    await asyncio.sleep(0.02)
    one.cancel()  # $/cancelRequest for the first request
    assert await two == 60 and not log  # the job ran on for the second
    assert one.cancelled()

    started.clear()
    three = asyncio.ensure_future(scheduler.run("a", steps_job(500, started, log), same="k"))
    while not started.is_set():
        await asyncio.sleep(0.005)
    four = asyncio.ensure_future(scheduler.run("a", steps_job(500), same="k"))
    await asyncio.sleep(0.02)
    three.cancel()
    four.cancel()
    await asyncio.gather(three, four, return_exceptions=True)
    for _ in range(200):
        if log:
            break
        await asyncio.sleep(0.01)
    assert log and log[0][0] == "cancelled at" and log[0][1] < 500  # the engine stopped early
    assert await scheduler.run("a", steps_job(1), same="k") == 1  # and the scheduler is usable


async def test_other_documents_are_not_cancelled():
    scheduler = Scheduler()
    a = asyncio.ensure_future(scheduler.run("a", steps_job(5)))
    b = asyncio.ensure_future(scheduler.run("b", steps_job(3)))
    assert await asyncio.gather(a, b) == [5, 3]


async def test_cancelling_the_awaiting_task_cancels_the_engine_token():
    scheduler = Scheduler()
    started, log = threading.Event(), []
    task = asyncio.ensure_future(scheduler.run("a", steps_job(500, started, log)))
    while not started.is_set():
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the engine thread stops at its next step and is free for the next request
    assert await scheduler.run("a", steps_job(1)) == 1
    assert log and log[0][1] < 500


async def test_a_request_superseded_while_queued_never_runs():
    scheduler = Scheduler()
    ran = []
    blocker = asyncio.ensure_future(scheduler.run("busy", steps_job(10)))
    queued = asyncio.ensure_future(scheduler.run("a", lambda token: ran.append("old") or "old"))
    await asyncio.sleep(0)
    newest = await scheduler.run("a", lambda token: ran.append("new") or "new")
    assert newest == "new"
    with pytest.raises(Superseded):
        await queued
    await blocker
    assert ran == ["new"]


async def test_debounce_drops_requests_replaced_within_the_window():
    scheduler = Scheduler(debounce_s=0.05)
    ran = []
    first = asyncio.ensure_future(scheduler.run("a", lambda token: ran.append(1) or 1))
    await asyncio.sleep(0.01)
    second = await scheduler.run("a", lambda token: ran.append(2) or 2)
    with pytest.raises(Superseded):
        await first
    assert second == 2 and ran == [2]


async def test_cancel_by_document_stops_its_request():
    scheduler = Scheduler()
    started = threading.Event()
    task = asyncio.ensure_future(scheduler.run("a", steps_job(500, started)))
    while not started.is_set():
        await asyncio.sleep(0.005)
    scheduler.cancel("a")
    with pytest.raises(Superseded):
        await task


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
    scheduler = Scheduler(adaptive=True)
    scheduler.pacing.typing_s, scheduler.pacing.model_s = 0.1, 2.0  # waits 150 ms for the next key
    ran: list[str] = []
    first = asyncio.ensure_future(scheduler.run("a", lambda token: ran.append("first") or 1))
    await asyncio.sleep(0)  # the first is waiting for a newer keystroke
    second = await scheduler.run("a", lambda token: ran.append("second") or 2)
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
