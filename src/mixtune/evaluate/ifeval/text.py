"""Offline text utilities for the IFEval checkers: word counts, sentence counts, word tokens, language id.

The reference (google-research `instruction_following_eval/instructions_util.py`) leans on NLTK: a `\\w+`
`RegexpTokenizer` for word counts, the pre-trained Punkt model (`tokenizers/punkt/english.pickle`, a download)
for sentence counts, and `nltk.word_tokenize` (Punkt + Treebank) for the all-capital-words count. We write our
own because the Punkt model is a download and NLTK is not a dependency:

- `count_words` is exact: the reference tokenizer is the regex `\\w+`.
- `count_sentences` re-implements Punkt's decision procedure (Kiss & Strunk 2006, as coded in
  `nltk.tokenize.punkt`) with a fixed abbreviation list and a fixed list of likely sentence starters in place of
  the learned parameters (abbreviation types, orthographic context). Differences are listed in docs/ifeval.md.
- `word_tokens` approximates the Treebank word tokenizer where it matters for `str.isupper()` counts: it splits
  on whitespace and punctuation and splits contractions (`DON'T` -> `DO`, `N'T`).
- `detect_language` is langdetect 1.0.9 (the reference's detector) with a private factory seeded at 0, so the
  answer does not change from run to run (langdetect's sampling is random unless seeded).
"""

from __future__ import annotations

import functools
import re

# -- words --------------------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"\w+")


def count_words(text: str) -> int:
    """Number of `\\w+` runs: the reference's `nltk.tokenize.RegexpTokenizer(r"\\w+")`, exactly."""
    return len(_WORD_RE.findall(text))


# Treebank pads these (PUNCTUATION and PARENS_BRACKETS rules) so they never stay inside a word; `,` and `:` are
# split only before a non-digit there, which changes nothing for letter case, so we always split them.
_TOKEN_SPLIT_RE = re.compile(r"\s+|\.{2,}|--|[,;:@#$%&?!(){}\[\]<>\"`“”]")
# Treebank ENDING_QUOTES / CONTRACTIONS2: clitics become their own token.
_CLITIC_RE = re.compile(r"^(.+?)(n't|'s|'m|'d|'ll|'re|'ve)$", re.IGNORECASE)
_CANNOT_RE = re.compile(r"^(can)(not)$", re.IGNORECASE)


def word_tokens(text: str) -> list[str]:
    """Word tokens close to `nltk.word_tokenize` for counting all-capital words (see module docstring).

    Hyphenated words stay one token (`WELL-KNOWN`), as in Treebank; contractions split (`DON'T` -> `DO`, `N'T`).
    Pure punctuation tokens are dropped: they can never be `isupper()`.
    """
    tokens: list[str] = []
    for chunk in _TOKEN_SPLIT_RE.split(text):
        chunk = chunk.strip("'")
        if not chunk:
            continue
        clitic = _CLITIC_RE.match(chunk) or _CANNOT_RE.match(chunk)
        tokens.extend([clitic.group(1), clitic.group(2)] if clitic else [chunk])
    return tokens


# -- sentences (Punkt replacement) --------------------------------------------------------------------------------

# Abbreviations after which a period does not end a sentence (a hand-picked subset of the abbreviation types in
# Punkt's English model: titles, company suffixes, Latin and country abbreviations, months).
# fmt: off
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "inc", "ltd", "co", "corp", "vs", "etc", "e.g", "i.e", "u.s",
    "u.k", "u.n", "a.m", "p.m", "jan", "feb", "aug", "sept", "oct", "nov", "dec", "gen", "gov", "sen", "rep", "rev",
    "lt", "col", "capt", "sgt", "mt", "ft", "approx", "dept", "fig"
})
# fmt: on
# Words that, capitalised after an abbreviation, an initial or an ellipsis, start a new sentence. Punkt decides this
# from learned orthographic statistics ("seen in lower case, never capitalised mid-sentence"); we use the common
# function words that satisfy that rule. "I" is deliberately absent: Punkt never sees it in lower case.
# fmt: off
_SENTENCE_STARTERS = frozenset({
    "the", "a", "an", "this", "that", "these", "those", "it", "its", "he", "she", "we", "they", "you", "my", "our",
    "your", "his", "her", "their", "there", "here", "but", "and", "so", "then", "however", "in", "on", "at", "for",
    "if", "when", "as", "after", "before", "while", "also", "what", "how", "why", "where", "who", "each", "every",
    "some", "many", "most", "all", "not", "one", "to", "with", "from", "by", "of", "is", "are", "was", "were", "do",
    "does", "can", "will", "let", "please", "finally", "first", "next"
})
# fmt: on
# A potential sentence end: a run of . ? ! with any closing quotes/brackets, then whitespace and a next token.
# Punkt's period-context regex also allows a non-word character right after the end mark; we require whitespace
# (or the end of text, which needs no break because the tail is always the last sentence).
_END_RE = re.compile(r"(?P<tok>\S*?)(?P<end>[.?!]+)(?P<close>[\"'”’)\]}*]*)(?=\s+(?P<next>\S+))")
_NUMBER_RE = re.compile(r"^-?[.,]?\d[\d,.\-]*$")  # Punkt's `##number##` type
_INITIAL_RE = re.compile(r"^[^\W\d]$")  # a single letter before the period (Punkt's `_re_initial`)


def _is_sentence_start(next_tok: str) -> bool:
    """Punkt's orthographic heuristic, reduced: a capitalised common word starts a sentence."""
    word = next_tok.lstrip("\"'“‘([{*")
    return bool(word) and word[0].isupper() and word.rstrip(".,;:!?\"'”’)]}*").lower() in _SENTENCE_STARTERS


def _is_break(tok: str, end: str, next_tok: str) -> bool:
    """Whether the end mark `end` after word `tok` ends a sentence (Punkt first and second pass, reduced)."""
    if "?" in end or "!" in end:
        return True  # Punkt: `?` and `!` are always sentence breaks
    word = tok.lstrip("\"'“‘([{*").lower()
    next_word = next_tok.lstrip("\"'“‘([{*")
    next_lower = bool(next_word) and next_word[0].islower()
    if len(end) > 1 or word.endswith("."):  # an ellipsis: a break only before a clear sentence start
        return _is_sentence_start(next_tok)
    if word in _ABBREVIATIONS or word.split("-")[-1] in _ABBREVIATIONS:
        return _is_sentence_start(next_tok)
    if _INITIAL_RE.match(word):  # "J. Smith" is no break; "Plan B. The rest" is
        return _is_sentence_start(next_tok)
    if _NUMBER_RE.match(word):  # "1. First" breaks (as in Punkt); "3. million" does not
        return not next_lower and next_word[:1] not in ";:,.!?"
    return True


def split_sentences(text: str) -> list[str]:
    """Split text into sentences the way Punkt's English model would, approximately (module docstring).

    Newlines alone never end a sentence (as in Punkt). Empty pieces are dropped, so "" has no sentences.
    """
    sentences: list[str] = []
    start = 0
    for m in _END_RE.finditer(text):
        if _is_break(m.group("tok"), m.group("end"), m.group("next")):
            sentences.append(text[start : m.end()])
            start = m.end()
    sentences.append(text[start:])
    return [s.strip() for s in sentences if s.strip()]


def count_sentences(text: str) -> int:
    """Number of sentences (the reference: `len(punkt_english.tokenize(text))`)."""
    return len(split_sentences(text))


# -- language ------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _language_factory():  # langdetect has no type hints
    """A langdetect factory of our own, seeded at 0, loaded once (does not touch langdetect's global factory)."""
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(0)
    return factory


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of the text's language (langdetect, seed 0), or None when langdetect cannot tell.

    The reference counts "cannot tell" (LangDetectException, e.g. no letters) as the instruction followed.
    """
    from langdetect.lang_detect_exception import LangDetectException

    detector = _language_factory().create()
    detector.append(text)
    try:
        return detector.detect()
    except LangDetectException:
        return None
