"""The adaptive wait: moving averages of typing gaps and model time, and the wait they give."""
import pytest

from lsp_server.pacing import MAX_WAIT_S, Pacing, average


def test_average_starts_at_the_first_sample_then_weighs_the_newest_by_alpha():
    assert average(None, 0.2) == 0.2
    assert average(0.2, 0.1) == pytest.approx(0.3 * 0.1 + 0.7 * 0.2)


def test_no_wait_until_both_typing_and_model_were_measured():
    p = Pacing()
    assert p.arrived("a", 10.0) == 0.0  # a first request: no gap yet
    assert p.arrived("a", 10.15) == 0.0 and p.typing_s == pytest.approx(0.15)  # no model time yet
    p.answered(2.0)
    assert p.wait_s() == pytest.approx(0.225)  # 1.5 typing intervals while the model is slower


def test_a_fast_model_gets_no_wait_and_the_wait_is_capped():
    p = Pacing()
    p.arrived("a", 0.0)
    p.arrived("a", 0.12)
    p.answered(0.05)  # answers within a typing interval
    assert p.wait_s() == 0.0
    slow = Pacing(typing_s=0.9, model_s=5.0)
    assert slow.wait_s() == MAX_WAIT_S


def test_pauses_and_other_documents_do_not_count_as_typing():
    p = Pacing()
    p.arrived("a", 0.0)
    p.arrived("a", 3.0)  # a pause, not a typing gap
    p.arrived("b", 3.1)  # another document's first request
    assert p.typing_s is None
    p.arrived("b", 3.3)
    assert p.typing_s == pytest.approx(0.2)
    p.forget("b")
    p.arrived("b", 3.4)
    assert p.typing_s == pytest.approx(0.2)
