"""The unified social credit code check (GB 32100-2015) in jinsuan.contract.creditcode."""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from jinsuan.contract.creditcode import (
    ALPHABET,
    WEIGHTS,
    CreditCodeError,
    check_character,
    validate_credit_code,
)

# Worked by hand for "91350100M000100Y43" (a code widely published as an example).
# Values: digits are themselves; letters count on past 9 skipping I, O, S, V, Z:
#   A10 B11 C12 D13 E14 F15 G16 H17 J18 K19 L20 M21 N22 P23 Q24 R25 T26 U27 W28 X29 Y30
#
#   pos  char  value  weight  product
#    1    9      9      1        9
#    2    1      1      3        3
#    3    3      3      9       27
#    4    5      5     27      135
#    5    0      0     19        0
#    6    1      1     26       26
#    7    0      0     16        0
#    8    0      0     17        0
#    9    M     21     20      420
#   10    0      0     29        0
#   11    0      0     25        0
#   12    0      0     13        0
#   13    1      1      8        8
#   14    0      0     24        0
#   15    0      0     10        0
#   16    Y     30     30      900
#   17    4      4     28      112
#   sum = 9 + 3 + 27 + 135 + 26 + 420 + 8 + 900 + 112 = 1640
#   1640 = 52 * 31 + 28, so 1640 mod 31 = 28; 31 - 28 = 3: the check character is '3'.
#
# "91110000802100433B": values 9 1 1 1 0 0 0 0 8 0 2 1 0 0 4 3 3, products
#   9 + 3 + 9 + 27 + 8*20 + 2*25 + 1*13 + 4*10 + 3*30 + 3*28
#   = 9 + 3 + 9 + 27 + 160 + 50 + 13 + 40 + 90 + 84 = 485 = 15 * 31 + 20; 31 - 20 = 11 = 'B'.
#
# Two made-up codes for the ends of the range:
# "100000000000000000" + ?: sum = 1*1 = 1; 31 - 1 = 30 = 'Y'.
# "100000000000000100" + ?: sum = 1*1 + 1*30 (position 16) = 31, 31 mod 31 = 0, 31 - 0 = 31,
#   which the standard writes as '0'.
VALID = [
    "91350100M000100Y43",
    "91110000802100433B",
    "10000000000000000Y",
    "100000000000000100",
]


@pytest.mark.parametrize("code", VALID)
def test_valid_codes_are_accepted(code):
    assert validate_credit_code(code) == code
    assert check_character(code[:17]) == code[17]


def test_alphabet_and_weights_are_the_standards():
    assert ALPHABET == "0123456789ABCDEFGHJKLMNPQRTUWXY"
    assert len(ALPHABET) == 31
    assert not set("IOZSV") & set(ALPHABET)
    assert WEIGHTS == (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
    assert tuple(3**i % 31 for i in range(17)) == WEIGHTS


def test_lower_case_and_surrounding_whitespace_are_normalised():
    assert validate_credit_code("  91350100m000100y43\n") == "91350100M000100Y43"
    assert validate_credit_code("\t91110000802100433b ") == "91110000802100433B"


@pytest.mark.parametrize("text, length", [("91350100M000100Y4", 17), ("91350100M000100Y431", 19),
                                          ("", 0), ("   ", 0)])
def test_wrong_length(text, length):
    with pytest.raises(CreditCodeError) as caught:
        validate_credit_code(text)
    assert caught.value.position is None
    assert caught.value.reason == f"a credit code has 18 characters, this has {length}"
    assert str(caught.value) == caught.value.reason
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("letter", list("IOZSV"))
def test_forbidden_letter_is_named_with_its_position(letter):
    text = "91350100" + letter + "000100Y43"
    with pytest.raises(CreditCodeError) as caught:
        validate_credit_code(text)
    assert caught.value.position == 9
    assert caught.value.reason == (
        f"character 9 '{letter}' is not allowed (I, O, Z, S, V are never used)"
    )


def test_forbidden_letter_in_the_division_code_is_reported_as_forbidden():
    with pytest.raises(CreditCodeError) as caught:
        validate_credit_code("9135I100M000100Y43")
    assert caught.value.position == 5
    assert caught.value.reason == "character 5 'I' is not allowed (I, O, Z, S, V are never used)"


def test_forbidden_letter_in_lower_case_is_reported_upper_cased():
    with pytest.raises(CreditCodeError) as caught:
        validate_credit_code("9i350100M000100Y43")
    assert caught.value.position == 2
    assert caught.value.reason == "character 2 'I' is not allowed (I, O, Z, S, V are never used)"


@pytest.mark.parametrize("text, position, char", [
    ("91350100M000-00Y43", 13, "-"),
    ("91350100M000 00Y43", 13, " "),
    ("9135010０M000100Y43", 8, "０"),  # a full-width digit is not a digit of the set
    ("91350100M000100Yß3", 17, "ß"),  # not upper-cased to "SS", so the length stays 18
])
def test_other_foreign_characters(text, position, char):
    with pytest.raises(CreditCodeError) as caught:
        validate_credit_code(text)
    assert caught.value.position == position
    assert f"character {position} {char!r} " in caught.value.reason


@pytest.mark.parametrize("position", range(3, 9))
def test_division_code_must_be_digits(position):
    text = "91350100M000100Y43"
    text = text[: position - 1] + "A" + text[position:]
    with pytest.raises(CreditCodeError) as caught:
        validate_credit_code(text)
    assert caught.value.position == position
    assert caught.value.reason == (
        f"character {position} 'A' must be a digit "
        f"(characters 3-8 are the administrative division code)"
    )


def test_first_problem_from_the_left_is_reported():
    with pytest.raises(CreditCodeError) as caught:
        validate_credit_code("9O3501A0M000100YIX")  # O at 2, A at 7, I at 17, bad check
    assert caught.value.position == 2


def test_wrong_check_character_names_the_expected_one():
    with pytest.raises(CreditCodeError) as caught:
        validate_credit_code("91350100M000100Y4X")
    assert caught.value.position == 18
    assert caught.value.reason == "the check character is 'X', expected '3'"


def test_forbidden_check_character():
    with pytest.raises(CreditCodeError) as caught:
        validate_credit_code("91350100M000100Y4Z")
    assert caught.value.position == 18
    assert caught.value.reason == "character 18 'Z' is not allowed (I, O, Z, S, V are never used)"


def test_check_character_refuses_bad_input():
    with pytest.raises(CreditCodeError) as caught:
        check_character("91350100M000100Y")
    assert caught.value.position is None
    assert "17" in caught.value.reason and "16" in caught.value.reason
    with pytest.raises(CreditCodeError) as caught:
        check_character("91350100M0001O0Y4")
    assert caught.value.position == 14
    # The checksum alone: letters are allowed at positions 3-8 here.
    assert check_character("91ABCDEFM000100Y4") in ALPHABET


def test_every_single_substitution_changes_the_weighted_sum_mod_31():
    """Why a substitution is always caught: 31 is prime and no weight is 0 mod 31, so a change
    of value d (1 <= |d| <= 30) at position i moves the sum by d * w_i, never 0 mod 31."""
    for weight in WEIGHTS:
        for delta in range(1, 31):
            assert delta * weight % 31 != 0
    # And the check value -sum mod 31 is one-to-one, so a changed sum means a changed check.


def test_weights_are_distinct_so_transpositions_are_caught():
    """Swapping values a != b at positions i, j in 1..17 moves the sum by (a - b)(w_j - w_i),
    which is 0 mod 31 only if w_i == w_j mod 31; the 17 weights are distinct mod 31."""
    assert len(set(WEIGHTS)) == 17


_DIGITS = st.sampled_from(string.digits)
_CHARS = st.sampled_from(ALPHABET)
BODIES = st.tuples(
    st.text(_CHARS, min_size=2, max_size=2),
    st.text(_DIGITS, min_size=6, max_size=6),
    st.text(_CHARS, min_size=9, max_size=9),
).map("".join)


@given(BODIES)
def test_appending_the_check_character_gives_a_valid_code(body):
    code = body + check_character(body)
    assert validate_credit_code(code) == code


@given(BODIES, st.integers(0, 17), st.integers(1, 30))
def test_any_single_substitution_is_detected(body, index, shift):
    code = body + check_character(body)
    replacement = ALPHABET[(ALPHABET.index(code[index]) + shift) % 31]  # any other character
    changed = code[:index] + replacement + code[index + 1 :]
    with pytest.raises(CreditCodeError) as caught:
        validate_credit_code(changed)
    # Either the division code is no longer digits, or the check character no longer fits.
    assert caught.value.position in (index + 1, 18)


@given(st.text(_CHARS, min_size=17, max_size=17), st.integers(0, 16), st.integers(1, 30))
def test_checksum_alone_detects_any_substitution(body, index, shift):
    replacement = ALPHABET[(ALPHABET.index(body[index]) + shift) % 31]
    changed = body[:index] + replacement + body[index + 1 :]
    assert check_character(changed) != check_character(body)


@given(BODIES, st.integers(0, 16), st.integers(0, 16))
def test_any_transposition_in_the_body_is_detected(body, i, j):
    assume(body[i] != body[j])
    code = body + check_character(body)
    swapped = list(code)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    with pytest.raises(CreditCodeError):
        validate_credit_code("".join(swapped))
