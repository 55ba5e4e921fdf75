"""Validation of China's unified social credit code (统一社会信用代码).

The rule comes from GB 32100-2015, *法人和其他组织统一社会信用代码编码规则* (Coding rule of the
unified social credit identifier for legal entities and other organizations). A code has 18
characters:

=========  ===============================================================================
Position   Meaning
=========  ===============================================================================
1          registration authority code (登记管理部门代码)
2          entity category code (机构类别代码)
3-8        administrative division code of the registering authority (登记管理机关行政区划码),
           six digits per GB/T 2260
9-17       organisation code (主体标识码), the body of a GB 11714 organisation code
18         check character (校验码)
=========  ===============================================================================

Every character comes from a 31-character set: the digits ``0``-``9`` and the upper-case
letters except ``I``, ``O``, ``Z``, ``S`` and ``V`` (too easily read as ``1``, ``0``, ``2``,
``5`` and ``U``). In the order ``0123456789ABCDEFGHJKLMNPQRTUWXY`` they have the values 0 to 30.

Positions 1 to 17 are weighted with ``1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10,
30, 28``, which are ``3 ** (i - 1) mod 31``. The check character is the one whose value is
``31 - (sum of value_i * weight_i mod 31)``, with 31 written as ``0``; put differently, the value
of the check character is ``-sum mod 31``.

Because 31 is prime and no weight is 0 modulo 31, the check character detects every change of a
single character to another character of the set. Because 3 has order 30 modulo 31, the 17
weights are distinct, so it also detects every exchange of two different characters among
positions 1 to 17.

This module checks the form and the check character only: it does not check that positions 1-2
are an authority and category pair the standard assigns, nor that positions 3-8 name a division
that exists. :func:`validate_credit_code` does insist that positions 3-8 are digits.

This module imports only the standard library: it belongs to the site contract layer.
"""

from __future__ import annotations

import string

__all__ = [
    "ALPHABET",
    "CODE_LENGTH",
    "WEIGHTS",
    "CreditCodeError",
    "check_character",
    "validate_credit_code",
]

ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
"""The 31 characters a credit code may use; a character's value is its index here."""

WEIGHTS: tuple[int, ...] = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
"""Weights of positions 1 to 17 (``3 ** (i - 1) mod 31``)."""

CODE_LENGTH = 18

_MODULUS = len(ALPHABET)
_VALUES = {ch: value for value, ch in enumerate(ALPHABET)}
_NEVER_USED = "IOZSV"
_DIVISION = range(3, 9)  # 1-based positions of the administrative division code
# Only ASCII letters are upper-cased: str.upper() would turn "ß" into "SS" and "ı" into "I",
# changing the length or making a foreign character look like a forbidden Latin one.
_ASCII_UPPER = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)


class CreditCodeError(ValueError):
    """A string is not a valid unified social credit code.

    ``position`` is the 1-based position of the first wrong character (18 when the check
    character is wrong), or ``None`` when the length is wrong. ``reason`` says what is wrong and
    where, in English; it is also the exception's message.
    """

    def __init__(self, reason: str, position: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.position = position


def _character_problem(ch: str, position: int, *, division: bool = True) -> str | None:
    """Why ``ch`` may not stand at ``position`` (1-based), or None if it may.

    A character outside the set is reported as such even at positions 3-8; only a character of
    the set that is not a digit is reported as breaking the division code. With ``division``
    false, positions 3-8 may hold any character of the set.
    """
    if ch in _NEVER_USED:
        return f"character {position} {ch!r} is not allowed (I, O, Z, S, V are never used)"
    if ch not in _VALUES:
        return (
            f"character {position} {ch!r} is not allowed "
            f"(only the digits 0-9 and the letters A-Y other than I, O, S, V are used)"
        )
    if division and position in _DIVISION and ch not in string.digits:
        return (
            f"character {position} {ch!r} must be a digit "
            f"(characters 3-8 are the administrative division code)"
        )
    return None


def _check_value(first17: str) -> int:
    total = sum(_VALUES[ch] * weight for ch, weight in zip(first17, WEIGHTS, strict=True))
    return -total % _MODULUS


def check_character(first17: str) -> str:
    """The check character (position 18) for the first 17 characters of a credit code.

    ``first17`` must be 17 characters of :data:`ALPHABET`, upper-case; it is not stripped or
    upper-cased, and positions 3-8 are not required to be digits (this is the checksum alone).
    Raises :class:`CreditCodeError` otherwise.
    """
    if len(first17) != CODE_LENGTH - 1:
        raise CreditCodeError(
            f"the check character is computed from {CODE_LENGTH - 1} characters, "
            f"this has {len(first17)}"
        )
    for position, ch in enumerate(first17, start=1):
        problem = _character_problem(ch, position, division=False)
        if problem is not None:
            raise CreditCodeError(problem, position)
    return ALPHABET[_check_value(first17)]


def validate_credit_code(text: str) -> str:
    """Return ``text`` as a normalised credit code, or raise :class:`CreditCodeError`.

    Normalising strips surrounding whitespace and upper-cases ASCII letters. The code must then
    have 18 characters of :data:`ALPHABET`, digits at positions 3-8, and the right check character
    at position 18. The first problem found, reading left to right, is the one reported; a
    character is quoted as it reads after upper-casing.
    """
    code = text.strip().translate(_ASCII_UPPER)
    if len(code) != CODE_LENGTH:
        raise CreditCodeError(f"a credit code has {CODE_LENGTH} characters, this has {len(code)}")
    for position, ch in enumerate(code, start=1):
        problem = _character_problem(ch, position)
        if problem is not None:
            raise CreditCodeError(problem, position)
    expected = ALPHABET[_check_value(code[:-1])]
    if code[-1] != expected:
        raise CreditCodeError(
            f"the check character is {code[-1]!r}, expected {expected!r}", CODE_LENGTH
        )
    return code
