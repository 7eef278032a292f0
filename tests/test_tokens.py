"""The default token counter (localmem.tokens): what each piece of text costs, that counts
add up over whitespace (what a budget sums), and check_counter's handling of your own
counter. Its error against real tokenizers is measured by benchmarks/token_count.py."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localmem.errors import InvalidInputError
from localmem.tokens import MESSAGE_OVERHEAD, check_counter, count_tokens

WHITESPACE = [c for c in map(chr, range(0x3001)) if c.isspace()]  # all of Unicode's


@pytest.mark.parametrize("text", ["", " ", "\n\t  \r\n", "\u3000\u00a0"])
def test_empty_and_blank_texts_cost_nothing(text):
    assert count_tokens(text) == 0


@pytest.mark.parametrize(("text", "tokens"), [
    ("a", 1), ("word", 1), ("words", 2), ("Caroline", 2), ("internationalization", 5),
    ("Hello, world!", 6),  # Hello 2, "," 1, world 2, "!" 1
    ("I love pizza napolitana", 1 + 1 + 2 + 3),
    ("snake_case", 4),  # the underscore is a piece of its own
    ("it's", 3),  # it, "'", s
])
def test_ascii_words_cost_one_token_per_four_letters(text, tokens):
    assert count_tokens(text) == tokens


@pytest.mark.parametrize(("text", "tokens"), [
    ("7", 1), ("123", 1), ("1234", 2), ("1234567", 3),
    ("2023-05-08", 2 + 1 + 1 + 1 + 1),
    ("R$ 15.800", 1 + 1 + 1 + 1 + 1),  # R, $, 15, ".", 800
    ("abc123", 2),  # letters and digits are separate pieces
])
def test_digits_cost_one_token_per_three(text, tokens):
    assert count_tokens(text) == tokens


@pytest.mark.parametrize(("text", "tokens"), [
    ("😀", 4), ("🇧🇷", 8), ("👍🏽", 8), ("€", 3), ("—", 3),
    ("ok 👍", 1 + 4),
    ("\ud800", 3),  # a lone surrogate counts as its 3 bytes instead of failing
])
def test_other_non_ascii_characters_cost_their_utf8_bytes(text, tokens):
    assert count_tokens(text) == tokens


@pytest.mark.parametrize(("text", "tokens"), [
    ("não", 2), ("café", 2), ("coração", 4), ("Elis", 1), ("Rosário", 4), ("Straße", 3),
    ("Você tá bem?", 2 + 1 + 1 + 1),
])
def test_words_with_non_ascii_letters_cost_one_token_per_two_letters(text, tokens):
    assert count_tokens(text) == tokens


@given(st.text(), st.text(), st.lists(st.sampled_from(WHITESPACE), min_size=1, max_size=3).map("".join))
def test_counts_add_up_over_whitespace(a, b, space):
    """What a budget relies on: the count of texts joined by whitespace is the sum of their
    counts, so counting messages one by one and adding them up is exact."""
    assert count_tokens(a + space + b) == count_tokens(a) + count_tokens(b)
    assert count_tokens(a + " " + b) == count_tokens(a) + count_tokens(b)


@given(st.text())
def test_a_count_is_at_most_one_token_per_byte_and_zero_only_for_blank_text(text):
    n = count_tokens(text)
    assert 0 <= n <= len(text.encode("utf-8", "surrogatepass"))
    assert (n == 0) == (text.strip() == "")


def test_message_overhead_is_a_small_positive_int():
    assert type(MESSAGE_OVERHEAD) is int and 3 <= MESSAGE_OVERHEAD <= 8


def test_check_counter_none_is_the_default():
    assert check_counter(None) is count_tokens
    assert check_counter(count_tokens) is count_tokens


@pytest.mark.parametrize("value", [0, 7, np.int64(7), np.uint8(7), np.int32(0)])
def test_check_counter_accepts_ints_and_numpy_integers_as_int(value):
    counter = check_counter(lambda text: value)
    result = counter("some text")
    assert result == int(value) and type(result) is int


def test_check_counter_passes_the_text_to_your_counter():
    seen = []
    counter = check_counter(lambda text: seen.append(text) or len(text))
    assert counter("hello") == 5 and seen == ["hello"]


@pytest.mark.parametrize("value", [-1, 1.5, 3.0, True, False, "3", None, np.float64(2.0), np.bool_(True),
                                   np.int64(-2), [3]])
def test_check_counter_refuses_a_result_that_is_not_an_int_at_least_zero(value):
    def my_counter(text):
        return value

    counter = check_counter(my_counter)
    with pytest.raises(InvalidInputError, match="count_tokens must return an int >= 0") as caught:
        counter("some text")
    assert repr(value) in str(caught.value) and "my_counter" in str(caught.value)


@pytest.mark.parametrize("value", [42, "o200k_base", 1.5, [len]])
def test_check_counter_refuses_what_is_not_callable(value):
    with pytest.raises(InvalidInputError, match="callable"):
        check_counter(value)


def test_check_counter_lets_your_counters_exceptions_through():
    def broken(text):
        raise RuntimeError("tokenizer not loaded")

    counter = check_counter(broken)
    with pytest.raises(RuntimeError, match="tokenizer not loaded"):
        counter("some text")


@settings(max_examples=500)
@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_the_ascii_fast_path_is_the_same_rule(text):
    from localmem.tokens import _count_pieces

    assert count_tokens(text) == _count_pieces(text)
