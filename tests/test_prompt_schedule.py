"""A1111 prompt editing/alternation schedules against hand-written expectations."""
import pytest

from library.sampling.prompt_schedule import prompt_schedule, text_at_step


@pytest.mark.parametrize("prompt, steps, expected", [
    ("a [cat:dog:2] b", 10, [(2, "a cat b"), (10, "a dog b")]),
    ("[cat:dog:0.5]", 10, [(5, "cat"), (10, "dog")]),          # float = fraction of steps
    ("[cat:dog:0.25]", 10, [(2, "cat"), (10, "dog")]),         # int(2.5)
    ("[dog:3]", 10, [(3, ""), (10, "dog")]),                   # [to:when]
    ("[cat::3]", 10, [(3, "cat"), (10, "")]),                  # [from::when]
    ("[a|b]", 3, [(1, "a"), (2, "b"), (3, "a")]),              # alternation by step index
    ("x [a|b|c]", 4, [(1, "x a"), (2, "x b"), (3, "x c"), (4, "x a")]),
    ("[[a:b:2]:c:4]", 5, [(2, "a"), (4, "b"), (5, "c")]),      # nested
    ("[(cat:1.2):dog:2]", 4, [(2, "(cat:1.2)"), (4, "dog")]),  # emphasis inside
    ("([cat:dog:1]:1.3)", 2, [(1, "(cat:1.3)"), (2, "(dog:1.3)")]),
    ("[a:b:1] BREAK c", 2, [(1, "a BREAK c"), (2, "b BREAK c")]),
    ("[a:b:20]", 10, [(10, "a")]),                             # capped at steps
    ("[a:b:0]", 10, [(10, "b")]),                              # below 1: no boundary
    ("\\[a:b:2\\]", 10, [(10, "\\[a:b:2\\]")]),                # escaped brackets are text
    ("a [b", 10, [(10, "a [b")]),                              # unmatched: literal
    ("[a:b]", 10, [(10, "[a:b]")]),                            # no number: literal
    ("[x] (y)", 10, [(10, "[x] (y)")]),                        # plain emphasis untouched
    ("[a: b : 2 ]", 4, [(2, "a"), (4, " b ")]),
    ("a|b [c:d:2]", 10, [(10, "a|b [c:d:2]")]),               # top-level | : A1111 falls back
])
def test_schedules(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


def test_text_at_step_uses_first_entry_not_before_step():
    sched = prompt_schedule("[a:b:2]", 10)
    assert [text_at_step(sched, i) for i in range(5)] == ["a", "a", "a", "b", "b"]
    alt = prompt_schedule("[a|b]", 4)
    assert [text_at_step(alt, i) for i in range(4)] == ["a", "a", "b", "a"]
