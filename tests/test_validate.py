"""The input rules every protocol shares (service/http/validate.py)."""

from __future__ import annotations

import pytest

from service.http.validate import digits, is_int, is_positive_int


@pytest.mark.parametrize(
    ("text", "expected"),
    [("7", 7), ("0042", 42), ("²", None), ("٣", None), ("", None), ("-1", None), ("1.5", None),
     (" 3", None), ("9" * 10, None), ("9" * 5000, None)],
)  # fmt: skip
def test_numbers_in_text_are_plain_ascii_digits_of_bounded_length(text: str, expected: int | None) -> None:
    assert digits(text, 9) == expected


@pytest.mark.parametrize("value", [True, False, 1.0, "1", None, [1]])
def test_a_json_integer_is_an_int_and_never_a_boolean(value: object) -> None:
    assert not is_int(value) and not is_positive_int(value)


def test_positive_integers_start_at_one() -> None:
    assert is_int(0) and not is_positive_int(0) and is_positive_int(1) and not is_positive_int(-3)
