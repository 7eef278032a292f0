"""The default running summary: extractive, offline, no LLM.

``ExtractiveSummarizer()(previous, messages)`` folds ``messages`` (oldest first) into the
summary ``previous`` and returns the new summary: lines of the form ::

    [2023-05-08] Caroline: I went to a LGBTQ support group yesterday.

one per sentence, each sentence copied verbatim from a message (never rewritten), after
the message's date (UTC) and its speaker: the message's role, or the speaker label the
content starts with ("Caroline: I went ...", as LoCoMo and multi-party transcripts store
it). The candidates are the lines of ``previous`` (kept as they are, whichever summariser
wrote them) and the sentences of ``messages``; the summary is re-selected from them under
``max_tokens``, greedily by salience per token, skipping near-duplicates of the lines
already chosen, and written in the candidates' order (the previous lines first, then the
new sentences in order). So ``f(f(p, m1), m2)`` is a summary of ``m1 + m2``, and a summary
that fits is a fixed point: ``f(s, []) == s``.

Salience counts what questions about a conversation ask for: capitalised words that do
not open the sentence (names, places), numbers, month and day names and words of relative
time (yesterday, last, next, week; ontem, próximo, semana...), plus 0.3 per distinct
content word of more than 3 letters; English and Portuguese stopwords do not count. A
sentence of fewer than 5 words ranks after every longer one that scores; one with nothing
that scores ("Thanks!", "Wow, that's cool!") is never chosen.

Measured on LoCoMo (5 conversations, 760 questions with evidence, asked after the last
session; tokens by ``localmem.tokens.count_tokens``; a budget of 4000 tokens: this summary
at 1000 plus the newest turns fitting 3000, folded whenever 500 tokens have slid out of
them): all of a question's evidence turns are inside summary + window for 31.1% of the
questions, against 15.9% inside the newest 4000 tokens alone; the answer's words are there
for 21.6% against 12.8%. Judging near-duplicates by embedding instead of by words changed
nothing measurable (30.9%). Centrality by embedding (centroid, TextRank) did much worse in
the research behind this: it picks pleasantries ("Thanks, Caroline!").
"""

from __future__ import annotations

import functools
import numbers
import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from . import driver
from .errors import InvalidInputError
from .records import Message
from .tokens import check_counter, count_tokens

if TYPE_CHECKING:  # numpy is imported on first use: ``import localmem`` stays light
    import numpy as np

__all__ = ["ExtractiveSummarizer"]

# Cosine above which two sentences are near-duplicates (with an embedder), and Jaccard
# similarity of their sets of words that are not stopwords above which they are (without
# one). Against the embedder's judgement over every pair of sentences of a conversation,
# 0.5 had the best F1 of 0.2-0.7 (0.6 and 0.7 tie on LoCoMo): 0.57 on LoCoMo (precision
# 0.44, recall 0.81), 0.96 on the Portuguese fixtures (0.99, 0.94); and on LoCoMo the same
# evidence share as cosine.
COSINE_DUPLICATE = 0.8
JACCARD_DUPLICATE = 0.5

# Sentences of fewer words are not salient on their own (the research's rule).
MIN_WORDS = 5
CONTENT_WEIGHT = 0.3
_EMBED_CACHE_SIZE = 4096
_LINE_CACHE_SIZE = 4096

# Stopwords, written without accents (words are compared after folding accents away):
# function words and the small talk that would otherwise count as names or content.
_STOP_EN = """a an the and or but if so to of in on at for with from by is are was were be been am i you he
she it we they me my your our their his her its this that these those do did does have has had not
no yes just really so very too also what how why when where who oh wow hey hi thanks thank great
awesome cool nice good glad love sounds like that's it's i'm you're don't can't will would can could
should about all any some more most much many one get got go going know think feel feeling make made
lot things thing yeah yep yup okay ok sure totally definitely absolutely amazing wonderful yay omg lol"""
_STOP_PT = """a o as os um uma uns umas de do da dos das em no na nos nas num numa por pelo pela pelos
pelas para pra pro pros pras com sem sobre entre ate e ou mas nem se que quem qual quais quando onde
como porque pois ja nao sim eu tu voce voces ele ela eles elas vos me mim te ti lhe lhes comigo
contigo meu minha meus minhas teu tua teus tuas seu sua seus suas nosso nossa nossos nossas dele
dela deles delas este esta estes estas esse essa esses essas isto isso aquilo aquele aquela
aqueles aquelas aqui ai ali la ca ser sou es somos sao era eram foi fui foram seja sejam estar
estou estamos estao estava estavam esteve ter tenho tens tem temos tinha tinham teve tive ha havia
fazer faz fiz fez vou vai vamos vao ir muito muita muitos muitas pouco pouca mais menos tambem so
bem mal entao ainda agora tudo todo toda todos todas nada algo alguem cada outro outra outros
outras mesmo mesma oi ola ei opa obrigado obrigada valeu legal otimo otima bom boa beleza claro
certo ok okay pronto fechado combinado uau puxa nossa gente coisa coisas acho achei sei saber quero
queria pode posso poderia seria sera tipo ne ta to"""
# Words that start a line like a speaker label but are headings ("Note: ...").
_NOT_SPEAKERS = """note notes nota notas ps obs update edit warning aviso tip dica todo question pergunta
answer resposta summary resumo example exemplo important importante step passo total subject
assunto re fwd"""
# Relative time words, month and day names (English and Portuguese, without accents).
# "may" is a month only when written "May" (see _salience).
_TIME = """january february march april june july august september october november december
monday tuesday wednesday thursday friday saturday sunday yesterday today tomorrow tonight last next
ago week weeks weekend month months year years janeiro fevereiro marco abril maio junho julho agosto
setembro outubro novembro dezembro segunda terca quarta quinta sexta sabado domingo ontem
anteontem hoje amanha semana semanas mes meses ano anos passado passada passados passadas proximo
proxima proximos proximas atras"""

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*|\d+")
_WORD_ASCII = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*|[0-9]+")  # the same on ASCII text, faster
# A sentence ends at . ! ? or … (a run of them, then closing quotes or brackets) before a
# space, unless the next sentence would start with a lowercase letter.
_END = re.compile(r"[.!?…]+[\"'”’»)\]]*\s+")
# Dotted words that do not end a sentence (without the dot; a single capital is an initial).
_ABBREVIATED = "mr mrs ms dr dra prof profa sr sra srta st jr vs e.g i.e eg ie cf av pag"
# Laughter: haha, hehe, kkkk, rsrs, ahahah.
_LAUGH = re.compile(r"(?:ha|he|hi|ah|eh|rs|k)+h?")
_HAS_LETTER = re.compile(r"[^\W\d_]")
_DOTTED = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")
# A leading speaker label: a capitalised name of 1 to 3 words, then ": ".
_SPEAKER = re.compile(r"([^\W\d_][\w'’.-]*(?: [^\W\d_][\w'’.-]*){0,2}):[ \t]+(?=\S)")
# The "[date] label: " a summary line starts with (label optional, as other summarisers may write).
_LABEL_JUNK = re.compile(r"[\[\]:]")
_PREFIX = re.compile(r"\[[^\]\n]*\][ \t]*(?:[^\s:\[][^:\n]{0,63}?:[ \t]+)?")


@functools.lru_cache(maxsize=1 << 16)
def _fold(word: str) -> str:
    """``word`` lowercased, without accents (what the word lists are written in)."""
    lowered = word.lower().replace("’", "'")
    if lowered.isascii():
        return lowered
    decomposed = unicodedata.normalize("NFD", lowered)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


_STOP = frozenset(_fold(w) for w in (_STOP_EN + " " + _STOP_PT).split())
_TIME_WORDS = frozenset(_fold(w) for w in _TIME.split())
_HEADINGS = frozenset(_NOT_SPEAKERS.split()) | _STOP
_ABBREVIATIONS = frozenset(_ABBREVIATED.split())


@dataclass(frozen=True, slots=True)
class _Unit:
    """One candidate line: ``line`` is what the summary holds, ``text`` what is scored."""

    line: str
    text: str


class _Piece(NamedTuple):
    """A candidate that scores (one per line or sentence; the same for a line every fold)."""

    line: str
    text: str
    cost: int  # tokens of the line, plus 1 for its newline
    key: tuple[int, float]  # (tier, -salience per token): lower goes first, then position
    words: frozenset[str]  # the words that are not stopwords, folded


class ExtractiveSummarizer:
    """The default summariser: ``summarizer(previous, messages) -> str`` (see the module).

    ``max_tokens``: the summary's budget, counted with ``count_tokens`` per line plus 1 per
    newline (default: ``localmem.tokens.count_tokens``; any ``callable(str) -> int``, which
    must give the same count for the same text: counts are kept, see below).
    ``embed``: ``embed(texts) -> float32 (n, dim)`` judges near-duplicates by cosine
    (> 0.8); without it, by the overlap of their words that are not stopwords (Jaccard
    > 0.5), the default: on LoCoMo the two give the same evidence share (31.1 % and 30.9 %)
    and the embedder costs 60-80 times as much per fold. An exception ``embed`` raises
    passes (the fold fails and is retried: no quiet switch to the other rule). Vectors are
    kept for the last 4096 sentences, and the scores and token counts of the last 4096
    summary lines, since each fold sees the previous summary's lines again.

    Deterministic, and safe to call from several threads.
    """

    def __init__(
        self,
        max_tokens: int = 1000,
        *,
        count_tokens: Callable[[str], int] | None = None,
        embed: Callable[[Sequence[str]], np.ndarray] | None = None,
    ) -> None:
        self.max_tokens = _check_budget(max_tokens)
        self._count = check_counter(count_tokens)
        if embed is not None and not callable(embed):
            raise InvalidInputError(
                f"embed must be a callable(texts) -> array or None, not {type(embed).__name__}"
            )
        self._embed = embed
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        # A summary line -> (its cost, its score as a whole line or None if nothing in it
        # scores): what a fold would compute again for each line of the previous summary.
        self._lines: OrderedDict[str, tuple[int, _Piece | None]] = OrderedDict()
        self._lock = threading.Lock()
        driver.reset_locks_after_fork(self)

    def reset_locks_after_fork(self) -> None:
        # A thread of the parent may have held the lock at fork(): the child's summary
        # worker would wait for it forever.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        dedupe = "embedding" if self._embed is not None else "lexical"
        return f"ExtractiveSummarizer(max_tokens={self.max_tokens}, dedupe={dedupe})"

    def __call__(self, previous: str, messages: Sequence[Message]) -> str:
        """The summary of what ``previous`` summarised plus ``messages`` (oldest first)."""
        if not isinstance(previous, str):
            raise InvalidInputError(f"previous must be a str (the earlier summary), not {type(previous).__name__}")
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise InvalidInputError(f"messages must be a sequence of Message, not {type(messages).__name__}")
        for message in messages:
            if not isinstance(message, Message):
                raise InvalidInputError(f"messages must hold Message records, not {type(message).__name__}")
        pieces = self._previous_pieces(previous)  # the candidates in order: their positions
        kept_lines = len(pieces)
        # The default counter adds up over whitespace, and every line of a message starts
        # with the same head ending in a space: count the head once.
        split_count = self._count is count_tokens
        head_costs: dict[str, int] = {}
        for message in messages:
            head, content = _message_head(message)
            for sentence in _sentences(content):
                words = (_WORD_ASCII if sentence.isascii() else _WORD).findall(sentence)
                salience, kept = _salience(words)
                if salience <= 0.0:
                    continue  # nothing in it scores: small talk
                line = head + sentence
                if split_count:
                    if (head_cost := head_costs.get(head)) is None:
                        head_cost = head_costs[head] = count_tokens(head)
                    cost = head_cost + count_tokens(sentence) + 1
                else:
                    cost = self._count(line) + 1
                pieces.append(_piece(line, sentence, cost, words, salience, kept))
        chosen = self._select(pieces)
        self._remember([p for p, keep in zip(pieces[kept_lines:], chosen[kept_lines:]) if keep])
        return "\n".join(p.line for p, keep in zip(pieces, chosen) if keep)

    # -- candidates --------------------------------------------------------------------

    def _previous_pieces(self, previous: str) -> list[_Piece]:
        """The scoring candidates of ``previous``: each non-blank line as it is; a line that
        could never fit the budget is split into its sentences (each after the line's
        prefix, if any)."""
        lines = [line for line in previous.splitlines() if line.strip()]
        known: dict[str, tuple[int, _Piece | None]] = {}
        with self._lock:
            for line in lines:
                if (entry := self._lines.get(line)) is not None:
                    self._lines.move_to_end(line)
                    known[line] = entry
        pieces: list[_Piece] = []
        fresh: dict[str, tuple[int, _Piece | None]] = {}
        for line in lines:
            entry = known.get(line) or fresh.get(line)
            if entry is None or entry[0] > self.max_tokens:
                prefix = _PREFIX.match(line)
                head, text = (line[: prefix.end()], line[prefix.end():]) if prefix else ("", line)
                cost = self._count(line) + 1 if entry is None else entry[0]
                if cost > self.max_tokens:
                    for sentence in _sentences(text):
                        if (piece := self._score(head + sentence, sentence)) is not None:
                            pieces.append(piece)
                    continue
                entry = fresh[line] = (cost, self._score(line, text, cost))
            if entry[1] is not None:
                pieces.append(entry[1])
        if fresh:
            self._store(fresh)
        return pieces

    def _remember(self, pieces: list[_Piece]) -> None:
        """Keep the scores of new lines of the summary for the next fold: the line read
        back as a line of ``previous`` scores the same when its prefix parses back to the
        sentence (as it does for the lines ``_message_units`` writes)."""
        fresh: dict[str, tuple[int, _Piece | None]] = {}
        for piece in pieces:
            prefix = _PREFIX.match(piece.line)
            if (piece.line[prefix.end():] if prefix else piece.line) == piece.text:
                fresh[piece.line] = (piece.cost, piece)
        if fresh:
            self._store(fresh)

    def _store(self, entries: dict[str, tuple[int, _Piece | None]]) -> None:
        with self._lock:
            self._lines.update(entries)
            for line in entries:
                self._lines.move_to_end(line)
            while len(self._lines) > _LINE_CACHE_SIZE:
                self._lines.popitem(last=False)

    def _score(self, line: str, text: str, cost: int | None = None) -> _Piece | None:
        words = (_WORD_ASCII if text.isascii() else _WORD).findall(text)
        salience, kept = _salience(words)
        if salience <= 0.0:
            return None  # nothing in it scores: small talk
        if cost is None:
            cost = self._count(line) + 1
        return _piece(line, text, cost, words, salience, kept)

    # -- selection ---------------------------------------------------------------------

    def _select(self, pieces: list[_Piece]) -> list[bool]:
        """Which of the candidates are chosen: greedy by rank (then position) under the
        budget, skipping the near-duplicates of those already chosen."""
        budget = self.max_tokens
        chosen_flags = [False] * len(pieces)
        if not pieces or (smallest := min(p.cost for p in pieces)) > budget:
            return chosen_flags  # nothing fits
        keys = [p.key for p in pieces]
        order = sorted(range(len(pieces)), key=keys.__getitem__)  # stable: ties in position order
        vectors = self._unit_vectors([p for p in pieces if p.cost <= budget])
        # For the lexical rule: the words that are not stopwords of the chosen that have
        # some, as (bits, how many), and the texts of those that have none.
        threshold = JACCARD_DUPLICATE  # read now: callers may change the module's value
        bits: dict[str, int] = {}
        masks: list[tuple[int, int]] = []
        wordless: list[str] = []
        chosen: list[_Piece] = []
        used = 0
        for k in order:
            candidate = pieces[k]
            if used + candidate.cost > budget:
                continue  # also skips whatever could never fit
            if vectors is not None:
                if chosen and _max_cosine(vectors, candidate, chosen) > COSINE_DUPLICATE:
                    continue
            elif candidate.words:
                if wordless and _plain(candidate.text) in wordless:
                    continue
                mask = 0  # the candidate's words as bits: a bit per word met in this call
                for word in candidate.words:
                    if (bit := bits.get(word)) is None:
                        bit = bits[word] = 1 << len(bits)
                    mask |= bit
                if _near_duplicate(mask, len(candidate.words), masks, threshold):
                    continue
                masks.append((mask, len(candidate.words)))
            else:
                text = _plain(candidate.text)
                if any(text == _plain(other.text) for other in chosen):
                    continue
                wordless.append(text)
            chosen.append(candidate)
            chosen_flags[k] = True
            used += candidate.cost
            if used + smallest > budget:
                break
        return chosen_flags

    def _unit_vectors(self, units: list[_Piece]) -> dict[str, np.ndarray] | None:
        """Unit vectors of the units' texts, or None for the lexical rule."""
        if self._embed is None:
            return None
        from .indexer import check_vectors  # numpy, on first use

        texts = list(dict.fromkeys(u.text for u in units))
        with self._lock:
            found = {t: v for t in texts if (v := self._vectors.get(t)) is not None}
        missing = [t for t in texts if t not in found]
        if missing:
            array = check_vectors(self._embed(missing), len(missing), None, "the summariser's embed")
            fresh = dict(zip(missing, array))
            found.update(fresh)
            with self._lock:
                self._vectors.update(fresh)
                while len(self._vectors) > _EMBED_CACHE_SIZE:
                    self._vectors.popitem(last=False)
        return found


def _piece(line: str, text: str, cost: int, words: list[str], salience: float, kept: frozenset[str]) -> _Piece:
    tier = 0 if len(words) >= MIN_WORDS else 1
    return _Piece(line, text, cost, (tier, -salience / cost), kept)


def _check_budget(value: Any) -> int:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) > 0:
        return int(value)
    raise InvalidInputError(f"max_tokens must be an int > 0; got {value!r}")


def _max_cosine(vectors: dict[str, np.ndarray], candidate: _Piece, chosen: list[_Piece]) -> float:
    import numpy as np

    matrix = np.stack([vectors[c.text] for c in chosen])
    return float(np.max(matrix @ vectors[candidate.text]))


def _near_duplicate(mask: int, n: int, chosen: list[tuple[int, int]], threshold: float) -> bool:
    """Whether the Jaccard similarity of a set of ``n`` words (``mask``, as bits) and the
    words of one of ``chosen`` ((bits, how many), none empty) is above ``threshold``."""
    if threshold < 0.0:
        return bool(chosen)  # even 0 shared words are above a negative threshold
    for other, m in chosen:
        shared = (mask & other).bit_count()
        if shared and shared / (n + m - shared) > threshold:  # 0 shared: not above threshold >= 0
            return True
    return False


def _plain(text: str) -> str:
    return text.strip().lower()


@functools.lru_cache(maxsize=1 << 16)
def _word_info(word: str) -> tuple[str, bool, bool, bool] | None:
    """None for a stopword or laughter; else (folded, capitalised, a number or time word,
    longer than 3 letters)."""
    folded = _fold(word)
    if folded in _STOP or _LAUGH.fullmatch(folded):
        return None
    return folded, word[0].isupper(), word.isdigit() or folded in _TIME_WORDS or word == "May", len(word) > 3


def _salience(words: list[str]) -> tuple[float, frozenset[str]]:
    """(capitalised non-initial non-stopwords + numbers and time words + 0.3 x distinct
    content words of more than 3 letters, the set of folded words that are not stopwords)."""
    caps = times = 0
    content: set[str] = set()
    kept: set[str] = set()
    for k, word in enumerate(words):
        info = _word_info(word)
        if info is None:
            continue
        folded, capitalised, timely, long = info
        kept.add(folded)
        if k > 0 and capitalised:
            caps += 1
        if timely:
            times += 1
        if long:
            content.add(folded)
    return caps + times + CONTENT_WEIGHT * len(content), frozenset(kept)


def _message_units(message: Message) -> list[_Unit]:
    """The sentences of a message, each as ``[date] label: sentence``."""
    head, content = _message_head(message)
    return [_Unit(head + sentence, sentence) for sentence in _sentences(content)]


def _message_head(message: Message) -> tuple[str, str]:
    """(``"[date] label: "``, the content after its speaker label if it starts with one)."""
    content = message.content
    label = _role_label(message.role)
    start = len(content) - len(content.lstrip())
    speaker = _SPEAKER.match(content, start)
    if speaker and _is_speaker(speaker.group(1)):
        label = speaker.group(1)
        content = content[speaker.end():]
    created = message.created_at
    if created.tzinfo is not None and created.tzinfo is not timezone.utc:
        created = created.astimezone(timezone.utc)
    return f"[{created.date().isoformat()}] {label}: ", content


@functools.lru_cache(maxsize=256)
def _role_label(role: str) -> str:
    return _LABEL_JUNK.sub("", " ".join(role.split()))[:40].strip() or "unknown"


@functools.lru_cache(maxsize=1024)
def _is_speaker(label: str) -> bool:
    words = label.split(" ")
    return (
        len(label) <= 40
        and all(w[0].isupper() for w in words)
        and _fold(words[0]).rstrip(".") not in _HEADINGS
    )


def _sentences(text: str) -> list[str]:
    """The sentences of ``text``, verbatim (stripped): split on line breaks and after
    . ! ? … when the next sentence does not start with a lowercase letter."""
    out: list[str] = []
    for line in text.splitlines():
        start = 0
        for end in _END.finditer(line):
            following = line[end.end(): end.end() + 1]
            if not following or following.islower():
                continue
            if not _HAS_LETTER.search(line, start, end.start()):
                continue  # "2." of a numbered list, "..." alone: part of what follows
            if end.group().rstrip() == "." and _abbreviation(line, end.start()):
                continue
            out.append(line[start: end.end()].strip())
            start = end.end()
        out.append(line[start:].strip())
    return [s for s in out if s]


def _abbreviation(line: str, dot: int) -> bool:
    """Whether the word before the dot at ``dot`` is an abbreviation or an initial."""
    before = line[max(0, dot - 40): dot].rsplit(None, 1)  # bounded: linear in the line's length
    return _abbreviated(before[-1] if before else "")


@functools.lru_cache(maxsize=4096)
def _abbreviated(word: str) -> bool:
    word = word.lstrip("\"'(“‘«[")
    if (len(word) == 1 and word.isupper()) or _DOTTED.fullmatch(word):
        return True  # an initial, or "U.S", "e.g"
    return _fold(word) in _ABBREVIATIONS
