"""A1111 prompt editing ``[from:to:when]`` and alternation ``[a|b|c]`` as per-step schedules.

Why: A1111 users write prompts whose text changes during sampling; the result must be a list
of ``(end_step, text)`` so conditioning is computed once per distinct text and picked per step.
Semantics follow A1111's ``prompt_parser.get_learned_conditioning_prompt_schedules`` (current,
not "old" scheduling), checked against the examples in its docstring (tests/test_prompt_schedule.py):
- ``when`` with a ``.`` is a fraction of the steps (``int(when * steps)``), otherwise a step
  count; both capped at ``steps``; values below 1 add no boundary.
- hires fix's second pass continues the timeline: with ``hires_steps`` given, a step count
  ``when`` is counted from the end of the first pass (``when - steps``) and a fraction from
  1.0 (``(when - 1) * hires_steps``), so ``[a:b:0.5]`` is ``b`` through the whole second
  pass and ``[a:b:1.5]`` switches halfway through it.
- ``steps`` are model calls, not sampler steps: A1111 doubles them for second-order samplers
  (``SamplerData.total_steps``) and counts every denoiser call (see step_conditioning.py).
- the text at boundary ``t`` uses ``from`` while ``t <= when``, else ``to``;
  ``[to:when]`` has an empty ``from``, ``[from::when]`` an empty ``to``.
- ``[a|b|c]`` adds every step 1..steps as a boundary; step ``t`` takes option ``(t-1) % n``.
- The sampler at 0-based step ``i`` uses the first entry whose ``end_step >= i``
  (:func:`text_at_step`), which is A1111's ``reconstruct_cond_batch`` rule.
- ``(x:1.2)``, ``(x)``, ``[x]``, ``\\[`` and BREAK pass through as text for the attention parser;
  an unmatched bracket is literal text; a ``|`` outside brackets, or a ``\\`` with nothing after
  it on its line, makes the prompt unscheduled (A1111's grammar fails to parse it and falls back
  to the whole prompt).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")


@dataclass(frozen=True)
class Scheduled:
    before: list
    after: list
    when: str


@dataclass(frozen=True)
class Alternate:
    options: list


class _Fail(Exception):
    pass


def _parse_seq(s: str, i: int, stops: str) -> tuple[list, int]:
    """Nodes (str | Scheduled | Alternate | list) from ``i`` up to a char in ``stops`` (not consumed)."""
    out: list = []
    text = []
    while i < len(s):
        c = s[i]
        if c in stops:
            break
        if c == "\\" and i + 1 < len(s):
            text.append(s[i:i + 2])
            i += 2
            continue
        if c in "[(":
            try:
                node, j = (_parse_bracket if c == "[" else _parse_paren)(s, i)
            except _Fail:
                if stops:  # inside a bracket an unmatched one fails the enclosing bracket too
                    raise
                text.append(c)
                i += 1
                continue
            if text:
                out.append("".join(text))
                text = []
            out.append(node)
            i = j
            continue
        if stops and c in ")]:|":
            raise _Fail
        text.append(c)
        i += 1
    if text:
        out.append("".join(text))
    return out, i


def _parse_paren(s: str, i: int) -> tuple[list, int]:
    first, j = _parse_seq(s, i + 1, ":)")
    if j < len(s) and s[j] == ":":
        second, j = _parse_seq(s, j + 1, ")")
        if j < len(s) and s[j] == ")":
            return ["(", *first, ":", *second, ")"], j + 1
        raise _Fail
    if j < len(s) and s[j] == ")":
        return ["(", *first, ")"], j + 1
    raise _Fail


def _parse_bracket(s: str, i: int) -> tuple[object, int]:
    first, j = _parse_seq(s, i + 1, ":|]")
    if j >= len(s):
        raise _Fail
    if s[j] == "]":
        return ["[", *first, "]"], j + 1
    if s[j] == "|":
        options = [first]
        while j < len(s) and s[j] == "|":
            nxt, j = _parse_seq(s, j + 1, "|]")
            options.append(nxt)
        if j < len(s) and s[j] == "]":
            return Alternate(options), j + 1
        raise _Fail
    m = _NUMBER.match(s, j + 1)  # [to:when]
    if m:
        return Scheduled([], first, m.group(1)), m.end()
    second, k = _parse_seq(s, j + 1, ":]")
    if k < len(s) and s[k] == ":":
        m = _NUMBER.match(s, k + 1)
        if m:
            return Scheduled(first, second, m.group(1)), m.end()
    raise _Fail


@dataclass(frozen=True)
class _Timeline:
    """Steps of this pass and where its numbers start (A1111's int_offset / flt_offset)."""

    steps: int
    int_offset: int = 0
    float_offset: float = 0.0


def _when_step(when: str, line: _Timeline) -> int:
    if "." in when:
        value = (float(when) - line.float_offset) * line.steps
    else:
        value = float(when) - line.int_offset
    return min(line.steps, int(value))


def _boundaries(nodes: list, steps: _Timeline, out: set[int]) -> None:
    for node in nodes:
        if isinstance(node, Scheduled):
            t = _when_step(node.when, steps)
            if t >= 1:
                out.add(t)
            _boundaries(node.before, steps, out)
            _boundaries(node.after, steps, out)
        elif isinstance(node, Alternate):
            out.update(range(1, steps.steps + 1))
            for option in node.options:
                _boundaries(option, steps, out)
        elif isinstance(node, list):
            _boundaries(node, steps, out)


def _text_at(nodes: list, step: int, steps: _Timeline) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, Scheduled):
            chosen = node.before if step <= _when_step(node.when, steps) else node.after
            parts.append(_text_at(chosen, step, steps))
        elif isinstance(node, Alternate):
            parts.append(_text_at(node.options[(step - 1) % len(node.options)], step, steps))
        else:
            parts.append(_text_at(node, step, steps))
    return "".join(parts)


def _parse(prompt: str) -> list | None:
    """The prompt's nodes, or None where A1111's grammar rejects the prompt (it is then used as written)."""
    if _DANGLING_ESCAPE.search(prompt):
        return None
    try:
        nodes, _end = _parse_seq(prompt, 0, "")
    except _Fail:  # pragma: no cover - the top level never raises
        return None
    if "|" in "".join(n for n in nodes if isinstance(n, str)).replace("\\|", ""):
        return None
    return nodes


# A backslash escapes any character but a newline; one at the end of a line fails A1111's grammar.
_DANGLING_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\(?:\n|$)")


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """A1111's schedule for one prompt: ``[(end_step, text), ...]``, end steps ascending, last = steps.

    With ``hires_steps`` it is the schedule of hires fix's second pass (``steps`` being the first
    pass's): end steps then run to ``hires_steps``.
    """
    line = _Timeline(steps) if hires_steps is None else _Timeline(hires_steps, steps, 1.0)
    nodes = _parse(prompt)
    if nodes is None:
        return [(line.steps, prompt)]
    bounds: set[int] = {line.steps}
    _boundaries(nodes, line, bounds)
    return [(t, _text_at(nodes, t, line)) for t in sorted(bounds)]


def has_schedule(prompt: str) -> bool:
    """Whether a prompt holds prompt editing or alternation (its text may change between steps)."""
    nodes = _parse(prompt)
    return nodes is not None and _any_scheduled(nodes)


def _any_scheduled(nodes: list) -> bool:
    for node in nodes:
        if isinstance(node, (Scheduled, Alternate)):
            return True
        if isinstance(node, list) and _any_scheduled(node):
            return True
    return False


def text_at_step(schedule: list[tuple[int, str]], step: int) -> str:
    """Text the sampler uses at 0-based ``step``: the first entry with ``end_step >= step``."""
    for end, text in schedule:
        if step <= end:
            return text
    return schedule[-1][1]
