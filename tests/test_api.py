"""The backend contract's pure rules (engine.api): where a suggestion's text stops mattering."""
import pytest

from engine.api import suggestion_end, through_loop


@pytest.mark.parametrize("text, kept", [
    ("os.path.path.path.path", "os.path"),
    ("os.path.path.path.path.path(x)", "os.path"),  # the first loop decides, whatever follows it
    (", 'green', 'green', 'green', 'green'", ", 'green'"),
    ("['red', 'green', 'green', 'green', 'green', 'green'] + x", "['red', 'green"),  # the run starts at a quote
    ("os.path.path.path.path.pa", "os.path"),
    (", g, g, g, g, g, g", ", g"),
    ("x = 1\nfoo(a, bar, bar, bar, bar)", "x = 1\nfoo(a, bar"),  # on a later line
    ("hahahahahaha", "ha"),  # a two-character unit needs six copies to make 12 characters
])
def test_a_loop_keeps_its_first_copy(text, kept):
    assert text[:through_loop(text)] == kept


@pytest.mark.parametrize("text", [
    "os.path.path.path",  # three copies: not yet
    "hahahaha",  # four copies, 8 characters: under LOOP_MIN_CHARS
    "# ============================",  # punctuation runs are code
    "grid = [0, 0, 0, 0, 0, 0, 0, 0]",  # so are digit runs
    "x = '                        '",
    "abcabcabc\nabc",  # copies on separate lines are lines, not a loop within one
    "self.x = x\nself.y = y\nself.z = z\nself.w = w\n",
    "",
])
def test_code_that_repeats_a_little_is_no_loop(text):
    assert through_loop(text) is None


@pytest.mark.parametrize("text", ["os.path.path.path.path", " a, b, b, b, b, b", "['r', 'gg', 'gg', 'gg', 'gg'"])
def test_the_cut_is_the_same_whatever_follows_the_fourth_copy(text):
    cut = through_loop(text)
    for more in ("", "x", text[-7:], text[-7:] * 3 + ")"):
        assert through_loop(text + more) == cut


def test_the_earliest_end_wins_and_each_rule_applies_only_when_asked():
    assert suggestion_end("os.path.path.path.path\n", True, None, True) == (len("os.path"), "loop")
    assert suggestion_end("os.path.path.path.path\n", True, None, False) == (len("os.path.path.path.path\n"),
                                                                              "line_end")
    assert suggestion_end("x\nos.path.path.path.path", True, None, True) == (2, "line_end")
    assert suggestion_end("    a\nb.c.c.c.c.c.c\n", False, 4, True) == (len("    a\nb.c"), "loop")
    assert suggestion_end("    a\nb\n", False, 4, True) == (len("    a\nb\n"), "block_end")
    assert suggestion_end("x = [\n  a.b.b.b.b.b.b", False, None, True) == (len("x = [\n  a.b"), "loop")  # any block
    assert suggestion_end("os.path.path.path.path\n", False, None, False) is None  # no rules: the raw text
