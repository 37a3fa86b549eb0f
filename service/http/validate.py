"""The input rules every protocol shares, spelled once.

- Numbers in text (a path's version, `?top_k=`, a label, a header's length) are plain ASCII digits:
  "²" and "٣" pass str.isdigit() but not int(), and int() refuses more than 4,300 digits.
- Integers in JSON are ints that are not booleans (`true` is not 1 here).
"""

from __future__ import annotations

from typing import Any, TypeGuard


def digits(text: str | bytes, max_digits: int) -> int | None:
    """The number `text` (a str, or a header's bytes as they came) spells in at most max_digits ASCII
    digits, or None."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


def is_int(value: Any) -> TypeGuard[int]:
    """A JSON integer: an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_positive_int(value: Any) -> TypeGuard[int]:
    return is_int(value) and value >= 1
