"""IFEval checkers for form: detectable_format, detectable_content, startend, punctuation, combination (13 types).

Each checker is `check(response, **kwargs) -> bool` with the keyword names of the reference
(google-research `instruction_following_eval/instructions.py`, `check_following` of the class named in each
docstring). Rules are the reference's; the code is our own.
"""

from __future__ import annotations

import json
import re

# ConstrainedResponseChecker's options (`_CONSTRAINED_RESPONSE_OPTIONS`).
CONSTRAINED_RESPONSE_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


# -- detectable_format ---------------------------------------------------------------------------------------------


def constrained_response(response: str) -> bool:
    """ConstrainedResponseChecker: one of the three "My answer is yes/no/maybe." options appears anywhere."""
    text = response.strip()
    return any(option in text for option in CONSTRAINED_RESPONSE_OPTIONS)


def json_format(response: str) -> bool:
    """JsonFormat: the response (less markdown ``` / ```json fences) parses as JSON."""
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):  # the reference strips these in order, each at most once
        text = text.removeprefix(fence)
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def multiple_sections(response: str, *, section_spliter: str, num_sections: int) -> bool:
    """SectionChecker: at least `num_sections` sections, each opened by "<spliter> <number>" ("SECTION 1")."""
    pattern = r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?"
    return len(re.split(pattern, response)) - 1 >= num_sections


def number_bullet_lists(response: str, *, num_bullets: int) -> bool:
    """BulletListChecker: exactly `num_bullets` markdown bullet lines ("* item" or "- item")."""
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def number_highlighted_sections(response: str, *, num_highlights: int) -> bool:
    """HighlightSectionChecker: at least `num_highlights` non-empty *highlighted* spans.

    As in the reference, a **double** highlight also counts once through the double-star pattern.
    """
    singles = re.findall(r"\*[^\n\*]*\*", response)
    doubles = re.findall(r"\*\*[^\n\*]*\*\*", response)
    count = sum(1 for h in singles if h.strip("*").strip())
    count += sum(1 for h in doubles if h.removeprefix("**").removesuffix("**").strip())
    return count >= num_highlights


def title(response: str) -> bool:
    """TitleChecker: a non-blank title in double angular brackets on one line, such as <<poem of joy>>."""
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))


# -- detectable_content --------------------------------------------------------------------------------------------


def number_placeholders(response: str, *, num_placeholders: int) -> bool:
    """PlaceholderChecker: at least `num_placeholders` square-bracket placeholders such as [address]."""
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def postscript(response: str, *, postscript_marker: str) -> bool:
    """PostscriptChecker: a line (case-insensitive) starts with the marker; P.S. / P.P.S allow spaces after dots."""
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, response.lower(), flags=re.MULTILINE))


# -- startend ------------------------------------------------------------------------------------------------------


def end_checker(response: str, *, end_phrase: str) -> bool:
    """EndChecker: ends with `end_phrase` (case-insensitive, after stripping whitespace and double quotes)."""
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(response: str) -> bool:
    """QuotationChecker: the stripped response is wrapped in double quotation marks."""
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


# -- punctuation ---------------------------------------------------------------------------------------------------


def no_comma(response: str) -> bool:
    """CommaChecker: no ASCII comma anywhere."""
    return "," not in response


# -- combination ---------------------------------------------------------------------------------------------------


def repeat_prompt(response: str, *, prompt_to_repeat: str) -> bool:
    """RepeatPromptThenAnswer: the response starts with the request, word for word (case-insensitive)."""
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def two_responses(response: str) -> bool:
    """TwoResponsesChecker: exactly two different non-empty answers separated by "******".

    An empty piece is allowed only before the first or after the last separator.
    """
    pieces = response.split("******")
    answers = []
    for i, piece in enumerate(pieces):
        if piece.strip():
            answers.append(piece.strip())
        elif 0 < i < len(pieces) - 1:
            return False
    return len(answers) == 2 and answers[0] != answers[1]
