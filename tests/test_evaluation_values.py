"""A1111 X/Y/Z value syntax."""
from __future__ import annotations

import pytest

from library.errors import SamplingError
from library.evaluation.values import (
    parse_float_values,
    parse_int_values,
    parse_size,
    split_csv,
)


def test_csv_quoting():
    assert split_csv('"red, blue", green') == ["red, blue", "green"]
    assert split_csv(" a ,b,, c ") == ["a", "b", "c"]


@pytest.mark.parametrize("text,expected", [
    ("1-5", [1, 2, 3, 4, 5]),
    ("1-10 (+2)", [1, 3, 5, 7, 9]),
    ("10-1 (-3)", [10, 7, 4, 1]),
    ("1-10 [5]", [1, 3, 5, 7, 10]),   # linspace 1, 3.25, 5.5, 7.75, 10 truncated
    ("1, 4-6, 20", [1, 4, 5, 6, 20]),
    ("-2-2", [-2, -1, 0, 1, 2]),
    ("7", [7]),
    ("5-1", []),                       # a descending range needs a negative step, as in A1111
])
def test_int_ranges(text, expected):
    assert parse_int_values(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("0.5-1.5 (+0.25)", [0.5, 0.75, 1.0, 1.25, 1.5]),
    ("0-1 [5]", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("0.8-1.2 (+0.1)", [0.8, 0.9, 1.0, 1.1, 1.2]),
    ("1.5-0.5 (-0.5)", [1.5, 1.0, 0.5]),
    ("3, 5.5, 7-9", [3.0, 5.5, 7.0, 8.0, 9.0]),
])
def test_float_ranges(text, expected):
    assert parse_float_values(text) == pytest.approx(expected)


def test_bad_values_name_the_field_and_value():
    with pytest.raises(SamplingError) as exc:
        parse_int_values("1, two", field="Steps")
    assert "Steps" in str(exc.value) and "'two'" in str(exc.value)
    with pytest.raises(SamplingError, match="step 0"):
        parse_float_values("1-2 (+0)")


def test_size():
    assert parse_size("512x768") == (512, 768)
    with pytest.raises(SamplingError, match="multiple of 8"):
        parse_size("500x512")
