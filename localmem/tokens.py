"""Token counting for context budgets: an offline default, and checks for your own counter.

``count_tokens(text)`` estimates how many tokens an LLM's tokenizer makes of ``text``
without any tokenizer, data file or network: pure Python and the ``re`` module, so it
works on a fresh offline install. It splits the text into pieces (a run of letters, a run
of digits, or any other single non-space character) and prices each piece:

- letters: one token per 4 characters if all ASCII, per 2 characters otherwise (ceil);
- digits: one token per 3 (cl100k and o200k split numbers into groups of 3);
- any other character: 1 if ASCII, else one per byte of its UTF-8 (a byte-level BPE
  tokenizer needs at most one token per byte; an emoji is 4 bytes, a flag 8).

Whitespace costs nothing, so counts add up over whitespace: ``count_tokens(a + " " + b) ==
count_tokens(a) + count_tokens(b)`` for any texts. A chat message costs
``MESSAGE_OVERHEAD`` tokens more than its content (role, separators).

Measured error: ``TIKTOKEN_CACHE_DIR=DIR python benchmarks/token_count.py`` (DIR holding
tiktoken's files; see that script). Compared with tiktoken 0.14's o200k_base (GPT-4o) and
cl100k_base (GPT-4, GPT-3.5), both files checked by tiktoken against their sha256 (o200k
from llama-index-core's bundled copy), on LoCoMo (2,760 turns as "Speaker: text", English)
and on the 286 Portuguese messages of benchmarks/data/auto_strategy_fixture*.json. Content
only, without ``MESSAGE_OVERHEAD``::

                          per message               sums over consecutive messages
                          median |err|  under       lowest ratio, runs reaching   total
                                                    500 / 4000 real tokens        ratio
    LoCoMo, o200k         36.4%         0.5%        1.24 / 1.32                   1.38
    LoCoMo, cl100k        31.2%         0.5%        1.21 / 1.27                   1.33
    Portuguese, o200k     27.3%         1.0%        1.15 / 1.26                   1.29
    Portuguese, cl100k     8.1%        21.0%        0.99 / 1.05                   1.13

("under": the share of messages underestimated.) So it overcounts, by 13-38% in total,
which is the price of staying safe on Portuguese: a context of 500 real tokens or more was
never counted below 0.99 of its size, and with the overhead (4 per message, against the 3
that OpenAI's format costs; the benchmark's "+overhead" column) never below 1.01. A single message can be undercounted, by at
most 22% (4 tokens) or 10 tokens (a long one), both Portuguese on cl100k. For comparison,
chars/4 (LangChain's default) in the same run: Portuguese totals 0.78 (cl100k) and 0.90
(o200k), and runs of 500 tokens counted as low as 0.66.

Limits: measured on English and Portuguese only. Spot checks on a few hand-written
sentences show other scripts vary widely: on cl100k, Korean, Greek, Chinese, Japanese and
Arabic came out 29-53% under; on o200k, Korean 26% under, while Hindi and Thai are
overcounted 2.7-3.5 times. For exact counts of one model, pass that model's tokenizer as
``count_tokens`` (any ``callable(str) -> int``).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable
from typing import Any

from .errors import InvalidInputError

__all__ = ["MESSAGE_OVERHEAD", "check_counter", "count_tokens"]

# Tokens a chat message costs beyond its content. OpenAI's chat format wraps every message
# as <|start|>{role}\n{content}<|end|>\n: 3 tokens per message on gpt-3.5-turbo-0613 and
# gpt-4, 4 on gpt-3.5-turbo-0301 (the OpenAI cookbook's num_tokens_from_messages);
# LangChain's count_tokens_approximately adds 3. The one more covers part of what
# count_tokens can miss on one message (at most 2 tokens on LoCoMo, 10 on a long Portuguese
# one against cl100k: benchmarks/token_count.py), so that runs of messages stay counted at
# or above their real size there (the benchmark's "+overhead" column).
MESSAGE_OVERHEAD = 4

# A run of letters | a run of digits | any other non-space character. The groups say which.
_PIECE = re.compile(r"([^\W\d_]+)|(\d+)|(\S)")
# The same rule on ASCII text, one token a match (letters 4 at a time, digits 3 at a
# time, anything else but a space 1): one regex pass, 3-4x faster (tests/test_tokens.py
# checks that the two agree).
_ASCII_TOKEN = re.compile(r"[A-Za-z]{1,4}|[0-9]{1,3}|\S")


def count_tokens(text: str) -> int:
    """Estimated tokens of ``text`` (content only; see the module docstring for the rule
    and its measured error). 0 for an empty or blank text."""
    if text.isascii():
        return len(_ASCII_TOKEN.findall(text))
    return _count_pieces(text)


def _count_pieces(text: str) -> int:
    """``count_tokens``'s rule, piece by piece (any text)."""
    n = 0
    for letters, digits, other in _PIECE.findall(text):
        if letters:
            n += math.ceil(len(letters) / (4 if letters.isascii() else 2))
        elif digits:
            n += math.ceil(len(digits) / 3)
        else:  # "surrogatepass": a lone surrogate counts as its 3 bytes instead of failing
            n += 1 if other.isascii() else len(other.encode("utf-8", "surrogatepass"))
    return n


_default = count_tokens  # check_counter's argument shadows the name


def check_counter(count_tokens: Any) -> Callable[[str], int]:
    """The token counter to use for ``count_tokens=...``: None gives the default
    ``count_tokens``; a callable is wrapped so that a result that is not an int >= 0 raises
    ``InvalidInputError`` (numpy integers are accepted as ints; a bool is refused). The
    counter's own exceptions pass unchanged. Anything else is an ``InvalidInputError``."""
    if count_tokens is None or count_tokens is _default:
        return _default
    if not callable(count_tokens):
        raise InvalidInputError(
            f"count_tokens must be a callable(str) -> int or None, not {type(count_tokens).__name__}"
        )
    counter = count_tokens

    def checked(text: str) -> int:
        value = counter(text)
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0:
            return int(value)
        raise InvalidInputError(
            f"count_tokens must return an int >= 0; {_name(counter)} returned {value!r} "
            f"({type(value).__name__}) for a text of {len(text)} characters"
        )

    return checked


def _name(function: Any) -> str:
    return str(getattr(function, "__qualname__", None) or type(function).__name__)
