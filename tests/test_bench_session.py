"""The session benchmark's pure parts: the seeded script, the files it types into, the summary."""
import math

from benchmarks.keystroke_replay import Problem
from benchmarks.session import PAUSE_S, ModeResult, Pause, build_files, parse_modes, percentile, script, summarize


def problems(n: int) -> list[Problem]:
    return [Problem(f"HumanEval/{i}", f"def f{i}(x):\n    \"\"\"doc {i}\"\"\"\n", f"    return x + {i}\n", "\n")
            for i in range(n)]


def test_files_hold_their_holes_without_the_bodies_and_reach_the_token_target():
    files = build_files(problems(40), 2, 60, lambda text: len(text.split()))
    assert len(files) == 2 and all(len(f.holes) == 2 for f in files)
    for f in files:
        assert len(f.text.split()) >= 60
        for hole in f.holes:
            assert hole.prefix in f.text and hole.prefix + hole.middle not in f.text
    assert files[0].uri != files[1].uri


def test_the_script_is_seeded_and_types_at_human_speed():
    files = build_files(problems(40), 2, 60, lambda text: len(text.split()))
    visits = [("open", 0, 1), ("jump", 0, 0), ("switch", 1, 1)]
    a, b = script(files, 7, 12, visits), script(files, 7, 12, visits)
    assert a == b and a != script(files, 8, 12, visits)
    keys = [e for e in a if e.kind == "key"]
    assert [e.kind for e in a if e.kind in ("open", "jump", "switch")] == ["open", "jump", "switch"]
    assert all(2.0 <= e.gap_s <= 5.0 for e in a if e.kind in ("open", "jump", "switch"))
    assert sum(e.first for e in keys) == 3 and all(e.gap_s >= PAUSE_S for e in keys if e.first)
    assert all(0.06 <= e.gap_s <= 1.6 for e in keys) and any(e.kind == "delete" for e in a)
    assert all(not e.accept or e.gap_s >= PAUSE_S for e in keys)
    tabs = [i for i, e in enumerate(a) if e.kind == "tab"]
    assert tabs and all(a[i - 1].accept and a[i].gap_s >= PAUSE_S for i in tabs), "a Tab ends an accepting pause"
    assert sum(e.accept for e in keys) == len(tabs)


def test_a_pause_with_no_answer_counts_as_never_in_the_percentiles():
    run = ModeResult("m", pauses=[Pause("first", 1500, 900.0, True), Pause("warm", 400, 100.0, True),
                                  Pause("warm", 400, 300.0, False), Pause("warm", 500, None, False),
                                  Pause("tab", 800, 40.0, True)],
                     cpu_s=30.0, wall_s=60.0)
    row = summarize(run)
    assert (row["p50_ms"], row["p95_ms"]) == (300.0, math.inf)
    assert (row["tab_p50_ms"], row["tab_count"]) == (40.0, 1)
    assert row["nothing_within_1s"] == 0.2 and row["first_p50_ms"] == 900.0 and row["warm_p50_ms"] == 300.0
    assert row["first_over_warm"] == 3.0 and row["cpu_s_per_min"] == 30.0
    assert percentile([], 50) is None


def test_modes_whose_names_hold_commas_can_be_named():
    assert parse_modes("+ idle prefill, hints,defaults (+ prefetch while shown)") == (
        ["+ idle prefill, hints", "defaults (+ prefetch while shown)"], [])
    assert parse_modes("today, + idle prefill, hints, two regions") == (
        ["today", "+ idle prefill, hints, two regions"], [])
    assert parse_modes("today,bogus, + adaptive wait") == (["today", "+ adaptive wait"], ["bogus"])
