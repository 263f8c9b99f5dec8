"""IFEval checkers for content: keywords, language, length_constraints, change_case (12 types).

Each checker is `check(response, **kwargs) -> bool` with the keyword names of the reference
(google-research `instruction_following_eval/instructions.py`, `check_following` of the class named in each
docstring). Rules are the reference's; the code is our own. Tokenisation lives in `text.py`.
"""

from __future__ import annotations

import re
from collections import Counter

from mixtune.evaluate.ifeval.text import count_sentences, count_words, detect_language, word_tokens

# The two relations the reference accepts (`_COMPARISON_RELATION`).
RELATIONS = ("less than", "at least")


def compare(actual: int, relation: str, threshold: int) -> bool:
    """`actual < threshold` for "less than", `actual >= threshold` for "at least"; anything else is an error."""
    if relation == "less than":
        return actual < threshold
    if relation == "at least":
        return actual >= threshold
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


# -- keywords ------------------------------------------------------------------------------------------------------
# The reference passes keywords to `re` unescaped; we escape them, which is the same for every keyword in the
# 541 prompts (letters and spaces only) and cannot crash on a mini-lab keyword such as "c++".


def existence(response: str, *, keywords: list[str]) -> bool:
    """KeywordChecker: every keyword occurs (case-insensitive substring search)."""
    return all(re.search(re.escape(k), response, flags=re.IGNORECASE) for k in keywords)


def forbidden_words(response: str, *, forbidden_words: list[str]) -> bool:
    """ForbiddenWords: no forbidden word occurs as a whole word (case-insensitive, `\\b` boundaries)."""
    return not any(re.search(r"\b" + re.escape(w) + r"\b", response, flags=re.IGNORECASE) for w in forbidden_words)


def frequency(response: str, *, keyword: str, frequency: int, relation: str) -> bool:
    """KeywordFrequencyChecker: case-insensitive substring occurrences of `keyword` compared with `frequency`."""
    occurrences = len(re.findall(re.escape(keyword.strip()), response, flags=re.IGNORECASE))
    return compare(occurrences, relation, frequency)


def letter_frequency(response: str, *, letter: str, let_frequency: int, let_relation: str) -> bool:
    """LetterFrequencyChecker: occurrences of `letter` (case-insensitive) compared with `let_frequency`.

    The reference treats any relation other than "less than" as "at least"; so do we.
    """
    count = Counter(response.lower())[letter.strip().lower()]
    return count < let_frequency if let_relation == "less than" else count >= let_frequency


# -- language ------------------------------------------------------------------------------------------------------


def response_language(response: str, *, language: str) -> bool:
    """ResponseLanguageChecker: langdetect says `language`; undetectable text counts as followed (reference)."""
    detected = detect_language(response)
    return detected is None or detected == language


# -- length_constraints --------------------------------------------------------------------------------------------


def number_sentences(response: str, *, num_sentences: int, relation: str) -> bool:
    """NumberOfSentences: the sentence count (Punkt in the reference; see text.py) compared with `num_sentences`."""
    return compare(count_sentences(response), relation, num_sentences)


def number_words(response: str, *, num_words: int, relation: str) -> bool:
    """NumberOfWords: the `\\w+` word count compared with `num_words`."""
    return compare(count_words(response), relation, num_words)


def number_paragraphs(response: str, *, num_paragraphs: int) -> bool:
    """ParagraphChecker: exactly `num_paragraphs` paragraphs separated by the markdown divider ***.

    An empty paragraph is allowed only at the start or the end (it is not counted); anywhere else it fails.
    """
    paragraphs = re.split(r"\s?\*\*\*\s?", response)
    count = len(paragraphs)
    for i, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if 0 < i < len(paragraphs) - 1:
                return False
            count -= 1
    return count == num_paragraphs


def nth_paragraph_first_word(response: str, *, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """ParagraphFirstWordCheck: `num_paragraphs` paragraphs split by blank lines ("\\n\\n"), and paragraph
    `nth_paragraph` (1-based) starts with `first_word` (case-insensitive, leading quotes and trailing
    punctuation ignored)."""
    paragraphs = re.split(r"\n\n", response)
    count = sum(1 for p in paragraphs if p.strip())
    # As in the reference, the n-th piece is indexed among all pieces (empty ones included), bounded by the count.
    if nth_paragraph > count:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first = ""
    for ch in word:
        if ch in {".", ",", "?", "!", "'", '"'}:
            break
        first += ch.lower()
    return count == num_paragraphs and first == first_word.lower()


# -- change_case ---------------------------------------------------------------------------------------------------


def capital_word_frequency(response: str, *, capital_frequency: int, capital_relation: str) -> bool:
    """CapitalWordFrequencyChecker: the number of all-capital word tokens (`str.isupper`) compared with
    `capital_frequency`. The reference tokenises with `nltk.word_tokenize`; we approximate it (text.py)."""
    capitals = sum(1 for w in word_tokens(response) if w.isupper())
    return capitals < capital_frequency if capital_relation == "less than" else capitals >= capital_frequency


def english_capital(response: str) -> bool:
    """CapitalLettersEnglishChecker: all cased letters upper case and langdetect says English (or cannot tell)."""
    return response.isupper() and detect_language(response) in ("en", None)


def english_lowercase(response: str) -> bool:
    """LowercaseLettersEnglishChecker: all cased letters lower case and langdetect says English (or cannot tell)."""
    return response.islower() and detect_language(response) in ("en", None)
