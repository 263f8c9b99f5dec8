"""Self-checks of the world's instruction responses, mirroring the IFEval checkers' rules for the ids we use.

Only for validating our own SFT data while it is generated; the benchmark is scored by mixtune.evaluate's IFEval
checkers. The rules follow google-research/instruction_following_eval (instructions.py, instructions_util.py,
Apache-2.0): words are `\\w+` tokens, sentences come from IFEval's regex splitter (ported below), relations are
"less than" (<) and "at least" (>=). The case instructions also need langdetect (seeded at 0, as our scorer) to
call the response English: short upper-case texts are sometimes taken for German.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

_ALPHABETS = "([A-Za-z])"
_PREFIXES = "(Mr|St|Mrs|Ms|Dr)[.]"
_SUFFIXES = "(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = (r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s|"
             r"This\s|Wherever)")
_ACRONYMS = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITES = "[.](com|net|org|io|gov|edu|me)"
_DIGITS = "([0-9])"
_MULTIPLE_DOTS = r"\.{2,}"


def split_into_sentences(text: str) -> list[str]:
    """IFEval's `instructions_util.split_into_sentences`, step for step."""
    text = " " + text + "  "
    text = text.replace("\n", " ")
    text = re.sub(_PREFIXES, "\\1<prd>", text)
    text = re.sub(_WEBSITES, "<prd>\\1", text)
    text = re.sub(_DIGITS + "[.]" + _DIGITS, "\\1<prd>\\2", text)
    text = re.sub(_MULTIPLE_DOTS, lambda m: "<prd>" * len(m.group(0)) + "<stop>", text)
    if "Ph.D" in text:
        text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    text = re.sub(r"\s" + _ALPHABETS + "[.] ", " \\1<prd> ", text)
    text = re.sub(_ACRONYMS + " " + _STARTERS, "\\1<stop> \\2", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>\\3<prd>", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>", text)
    text = re.sub(" " + _SUFFIXES + "[.] " + _STARTERS, " \\1<stop> \\2", text)
    text = re.sub(" " + _SUFFIXES + "[.]", " \\1<prd>", text)
    text = re.sub(" " + _ALPHABETS + "[.]", " \\1<prd>", text)
    if "”" in text:
        text = text.replace(".”", "”.")
    if '"' in text:
        text = text.replace('."', '".')
    if "!" in text:
        text = text.replace('!"', '"!')
    if "?" in text:
        text = text.replace('?"', '"?')
    text = text.replace(".", ".<stop>").replace("?", "?<stop>").replace("!", "!<stop>").replace("<prd>", ".")
    sentences = [s.strip() for s in text.split("<stop>")]
    if sentences and not sentences[-1]:
        sentences = sentences[:-1]
    return sentences


def count_words(text: str) -> int:
    """IFEval's word count: nltk RegexpTokenizer(r"\\w+") tokens."""
    return len(re.findall(r"\w+", text))


def _compare(value: int, relation: str, target: int) -> bool:
    if relation == "less than":
        return value < target
    if relation == "at least":
        return value >= target
    raise ValueError(f"unknown relation {relation!r}")


@functools.lru_cache(maxsize=1)
def _language_factory() -> Any:
    """A langdetect factory of our own, seeded at 0 and loaded once (langdetect's global one is unseeded)."""
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(0)
    return factory


def is_english(text: str) -> bool:
    """langdetect calls `text` English, or cannot tell (IFEval counts that as followed)."""
    from langdetect.lang_detect_exception import LangDetectException

    detector = _language_factory().create()
    detector.append(text)
    try:
        return detector.detect() == "en"
    except LangDetectException:
        return True


def _quotation(r: str) -> bool:
    r = r.strip()
    return len(r) > 1 and r[0] == '"' and r[-1] == '"'


def _title(r: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r))


def _bullets(r: str, num_bullets: int) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", r, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def _postscript(r: str, postscript_marker: str) -> bool:
    assert postscript_marker == "P.S.", "only the P.S. marker is generated"
    return bool(re.findall(r"\s*p\.\s?s\..*$", r.lower(), flags=re.MULTILINE))


CHECKS: dict[str, Callable[..., bool]] = {
    "change_case:english_lowercase": lambda r: r.islower() and is_english(r),
    "change_case:english_capital": lambda r: r.isupper() and is_english(r),
    "punctuation:no_comma": lambda r: "," not in r,
    "startend:end_checker": lambda r, end_phrase: r.strip().lower().endswith(end_phrase.strip().lower()),
    "startend:quotation": _quotation,
    "keywords:existence": lambda r, keywords: all(re.search(k, r, flags=re.IGNORECASE) for k in keywords),
    "keywords:frequency": lambda r, keyword, frequency, relation: _compare(
        len(re.findall(keyword, r, flags=re.IGNORECASE)), relation, frequency),
    "length_constraints:number_words": lambda r, relation, num_words: _compare(count_words(r), relation, num_words),
    "length_constraints:number_sentences": lambda r, relation, num_sentences: _compare(
        len(split_into_sentences(r)), relation, num_sentences),
    "detectable_format:title": _title,
    "detectable_content:postscript": _postscript,
    "detectable_format:number_bullet_lists": _bullets,
}


def follows(response: str, instruction_ids: list[str], kwargs: list[dict[str, Any]]) -> list[bool]:
    """One bool per instruction: does `response` follow it (IFEval strict rules)."""
    return [CHECKS[i](response, **k) for i, k in zip(instruction_ids, kwargs)]
