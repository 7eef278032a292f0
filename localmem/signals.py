"""What a search knows besides its two rankings: the query's time and names, and each
candidate's shape. The pipeline's stage 4 (``retrieval.adjust``) adds these to the fused
score of each candidate; this module reads them from text and knows nothing of the store.

Each signal was measured on LoCoMo (benchmarks/locomo.py, five conversations; decided on
three, confirmed on the other two: benchmarks/locomo_signals.py prints every step; the
gains below are what taking the signal out of the default loses, on all five):

* **Replies** (``REPLY_SHARE``): a message that asks a question (``asks``) passes a share
  of its score to the message that follows it in its conversation, its answer. The
  question turn ("You play any instruments?") matches a query best; the answer ("Yes, I
  play clarinet") is what the caller needs. recall@1 +0.033.
* **Conversations** (``CONVERSATION_SHARE``): every message gets a share of the best
  fused score in its conversation: a conversation where something matches well is where
  the rest of the answer is likely to be. recall@5 and recall@10 +0.008 (a share of
  0.1-0.4 measured; more costs multi-hop questions, whose answer is spread out).
* **Time** (``TIME_BONUS``): a query that names a time ("in July 2023", "on 13 October,
  2023", "last May", "em maio de 2023", "last year") favours messages written in that span
  or up to ``TIME_SLACK`` after it (people tell what they did after they did it).
  recall@10 +0.019; temporal questions +0.035.
* **Names** (``NAME_BONUS``): capitalised words of the query (people, places, things:
  "What did Caroline research?") favour messages that contain them. recall@1 +0.005.
* **Substance** (``LENGTH_WEIGHT``): ``log(1 + distinct words)``: between two messages
  the rankings score alike, the one with more to say ("Thanks!" rarely answers a
  question). recall@1 +0.022, recall@10 +0.009.

The constants are in units of the fused score (``retrieval.fuse``: 1.0 is the best of
both rankings).
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

REPLY_SHARE = 0.2
CONVERSATION_SHARE = 0.2
TIME_BONUS = 0.3
TIME_SLACK = timedelta(days=14)
NAME_BONUS = 0.1
LENGTH_WEIGHT = 0.08

# A word, as keyword queries and the signals split text (the keyword index tokenises alike).
WORD = re.compile(r"\w+", re.UNICODE)
# Function words left out of keyword queries (English and Portuguese): OR-ing "what" or
# "the" into BM25 only adds noise. On LoCoMo, dropping them lifts BM25 recall@10 by 5 points.
# (One string, split: easier to read and edit than a list of quoted words.)
STOPWORDS = frozenset(
    "a an and are as at be by did do does for from had has have he her his how i in is it "  # noqa: SIM905
    "its my of on or she that the their they this to was were what when where which who "
    "why will with you your "
    "o os as um uma uns umas de do da dos das em no na nos nas para por com que e é se "
    "ao aos à às eu ele ela eles elas meu minha seu sua foi ser são qual quando onde como".split()
)
# A query's capitalised words that are not names: those, more question words, and the
# verbs and greetings a request opens with.
_NOT_NAMES = STOPWORDS | frozenset(
    "can could if should whom whose would quais quem porque "  # noqa: SIM905
    "tell show give find list remind recall remember describe explain summarize summarise "
    "please hey hi hello thanks ok okay yes no "
    "diga conte mostre lembre lembra descreva explique resuma por favor oi ola obrigado sim nao".split()
)
_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_FIRST = datetime.min.replace(tzinfo=_UTC)
_MICROSECOND = timedelta(microseconds=1)

# Month names, English and Portuguese, full and abbreviated, folded (no accents). Written
# out: the calendar module's names follow the process locale.
_MONTHS: dict[str, int] = {}
for _names in ("january february march april may june july august september october november december",
               "jan feb mar apr may jun jul aug sep oct nov dec",
               "janeiro fevereiro marco abril maio junho julho agosto setembro outubro novembro dezembro"):
    _MONTHS.update((name, number) for number, name in enumerate(_names.split(), start=1))
_MONTHS["sept"] = 9
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_DAY = r"(\d{1,2})(?:st|nd|rd|th|o)?"  # "13º" is folded to "13o"
_YEAR = r"((?:19|20)\d\d)"
_OF = r"(?:\s+(?:de|of))?"  # "13 de outubro de 2023", "3rd of March"
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("day month year", re.compile(rf"\b{_DAY}{_OF}\s+({_MONTH})\.?,?{_OF}\s+{_YEAR}\b")),
    ("month day year", re.compile(rf"\b({_MONTH})\.?\s+{_DAY},?\s+{_YEAR}\b")),
    ("month year", re.compile(rf"\b({_MONTH})\.?,?{_OF}(?:\s+of)?\s+{_YEAR}\b")),
    ("year", re.compile(rf"\b(?:in|during|since|em|durante|desde)\s+{_YEAR}\b")),  # not "of 2000 items"
    ("month", re.compile(rf"\b(?:in|during|since|last|em|desde|no mes de)\s+({_MONTH})\b")),
)
_RELATIVE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(?:yesterday|ontem)\b"), "yesterday"),
    (re.compile(r"\b(?:today|hoje)\b"), "today"),
    (re.compile(r"\b(?:last week|semana passada)\b"), "last week"),
    (re.compile(r"\b(?:last month|mes passado)\b"), "last month"),
    (re.compile(r"\b(?:last year|ano passado)\b"), "last year"),
)


_COMBINING = re.compile(r"[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")


def fold(text: str) -> str:
    """Lower case without accents ("Março" -> "marco"), as the keyword index folds. (It
    runs on every candidate of every search: ASCII text, most of it, is only lowered.)"""
    if text.isascii():
        return text.lower()
    return _COMBINING.sub("", unicodedata.normalize("NFKD", text.lower()))


@dataclass(frozen=True, slots=True)
class Span:
    """A time a query names: ``[start, end)``, or a month of any year (``month``, with
    ``start`` and ``end`` None) for "in June"."""

    start: datetime | None
    end: datetime | None
    month: int | None = None

    def holds(self, when: datetime) -> bool:
        """Whether a message written at ``when`` may tell of this time: in it, or up to
        ``TIME_SLACK`` after it."""
        if self.month is not None:
            earlier = when - TIME_SLACK if when - _FIRST >= TIME_SLACK else when  # year 1
            return when.month == self.month or earlier.month == self.month
        assert self.start is not None and self.end is not None
        return self.start <= when < self.end + TIME_SLACK

    def holds_us(self, when_us: int) -> bool:
        """``holds`` for a time in µs since the epoch (as the store keeps it), converted
        only when a month of any year must be compared."""
        if self.month is not None:
            return self.holds(_EPOCH + timedelta(microseconds=when_us))
        assert self.start is not None and self.end is not None
        start = (self.start - _EPOCH) // _MICROSECOND
        end = (self.end + TIME_SLACK - _EPOCH) // _MICROSECOND
        return start <= when_us < end


@dataclass(frozen=True, slots=True)
class QueryHints:
    """What a query says besides its words: the time it names (None: none) and its
    capitalised words, folded (``names``)."""

    span: Span | None
    names: tuple[str, ...]


def _month_span(year: int, month: int) -> Span:
    start = datetime(year, month, 1, tzinfo=_UTC)
    return Span(start, datetime(year + month // 12, month % 12 + 1, 1, tzinfo=_UTC))


def time_span(query: str, now: datetime) -> Span | None:
    """The first time ``query`` names (English or Portuguese), or None: a date, a month
    of a year, a year, a month alone ("in June": that month of any year), or a time
    relative to ``now`` (yesterday, today, last week, last month, last year; in UTC
    days). A date that does not exist ("31 February 2023") names nothing."""
    text = fold(query)
    for kind, pattern in _PATTERNS:
        match = pattern.search(text)
        if match is None:
            continue
        if kind == "month" and match[1] == "may" and not re.search(r"\bMay\b", query):
            continue  # "since may be", "in may help": the verb, unless written as the month
        try:
            if kind == "day month year":
                start = datetime(int(match[3]), _MONTHS[match[2]], int(match[1]), tzinfo=_UTC)
                return Span(start, start + timedelta(days=1))
            if kind == "month day year":
                start = datetime(int(match[3]), _MONTHS[match[1]], int(match[2]), tzinfo=_UTC)
                return Span(start, start + timedelta(days=1))
        except ValueError:  # no such day
            return None
        if kind == "month year":
            return _month_span(int(match[2]), _MONTHS[match[1]])
        if kind == "year":
            year = int(match[1])
            return Span(datetime(year, 1, 1, tzinfo=_UTC), datetime(year + 1, 1, 1, tzinfo=_UTC))
        return Span(None, None, _MONTHS[match[1]])
    for pattern, name in _RELATIVE:
        if pattern.search(text):
            return _relative(name, now)
    return None


def _relative(name: str, now: datetime) -> Span:
    today = datetime(now.year, now.month, now.day, tzinfo=_UTC)
    if name == "today":
        return Span(today, today + timedelta(days=1))
    if name == "yesterday":
        return Span(today - timedelta(days=1), today)
    if name == "last week":
        monday = today - timedelta(days=today.weekday())
        return Span(monday - timedelta(days=7), monday)
    if name == "last month":
        year, month = (now.year - 1, 12) if now.month == 1 else (now.year, now.month - 1)
        return _month_span(year, month)
    return Span(datetime(now.year - 1, 1, 1, tzinfo=_UTC), datetime(now.year, 1, 1, tzinfo=_UTC))


def names(query: str) -> tuple[str, ...]:
    """The query's capitalised words that are not question or function words, request
    verbs or months (the time signal reads those), folded and without a possessive
    ("Caroline's" -> "caroline"), in order, once each."""
    found = []
    for word in re.findall(r"[^\W\d_][\w'’]*", query):
        base = re.sub(r"['’]s?$", "", word)
        if not base[0].isupper() or fold(base) in _NOT_NAMES or fold(base) in _MONTHS:
            continue
        # as words() splits a message: "O'Brien" is "o" and "brien"; one letter is no name
        found += [part for part in WORD.findall(fold(base)) if len(part) > 1]
    return tuple(dict.fromkeys(found))


def hints(query: str, now: datetime) -> QueryHints:
    """Everything this module reads in a query."""
    return QueryHints(time_span(query, now), names(query))


def asks(text: str) -> bool:
    """Whether a message asks something: it holds a question mark. (Measured against
    "ends with one": a question is often followed by more, "How was it? Send photos!",
    or by an attachment note; recall@5 +0.004, recall@10 +0.004 on LoCoMo.)"""
    return "?" in text or "？" in text


# ASCII text split as \w+ would split it, by str methods (a regex per candidate per search
# was a third of the signals stage's time): every ASCII character that is not a word
# character becomes a space.
_ASCII_NON_WORD = {i: " " for i in range(128) if not (chr(i).isalnum() or chr(i) == "_")}


def words(text: str) -> frozenset[str]:
    """The distinct words (runs of word characters) of a message, folded."""
    if text.isascii():
        return frozenset(text.lower().translate(_ASCII_NON_WORD).split())
    return frozenset(WORD.findall(fold(text)))


def bonus(text: str, when_us: int, query: QueryHints) -> float:
    """What the time, the names and the length add to the fused score of a message
    written at ``when_us`` (µs since the epoch, UTC)."""
    distinct = words(text)
    added = LENGTH_WEIGHT * math.log1p(len(distinct))
    if query.span is not None and query.span.holds_us(when_us):
        added += TIME_BONUS
    if query.names:
        added += NAME_BONUS * len(distinct.intersection(query.names)) / len(query.names)
    return added


__all__ = [
    "CONVERSATION_SHARE",
    "LENGTH_WEIGHT",
    "NAME_BONUS",
    "REPLY_SHARE",
    "STOPWORDS",
    "TIME_BONUS",
    "TIME_SLACK",
    "QueryHints",
    "Span",
    "asks",
    "bonus",
    "fold",
    "hints",
    "names",
    "time_span",
    "words",
]
