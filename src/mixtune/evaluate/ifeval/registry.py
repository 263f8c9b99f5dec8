"""The IFEval instruction registry and strict / loose following checks.

`INSTRUCTIONS` maps each of the 25 instruction ids in IFEval's input_data.jsonl to its checker
(google-research `instruction_following_eval/instructions_registry.py`). Strict and loose evaluation follow
`evaluation_lib.py`: strict checks the response as given; loose also tries the response without its first line,
without its last line, without both, and each of those with every `*` removed, and counts the instruction as
followed when any variant passes. An empty (blank) response follows nothing in both modes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mixtune.evaluate.ifeval import checks_content as content
from mixtune.evaluate.ifeval import checks_format as fmt

Checker = Callable[..., bool]

INSTRUCTIONS: dict[str, Checker] = {
    "change_case:capital_word_frequency": content.capital_word_frequency,
    "change_case:english_capital": content.english_capital,
    "change_case:english_lowercase": content.english_lowercase,
    "combination:repeat_prompt": fmt.repeat_prompt,
    "combination:two_responses": fmt.two_responses,
    "detectable_content:number_placeholders": fmt.number_placeholders,
    "detectable_content:postscript": fmt.postscript,
    "detectable_format:constrained_response": fmt.constrained_response,
    "detectable_format:json_format": fmt.json_format,
    "detectable_format:multiple_sections": fmt.multiple_sections,
    "detectable_format:number_bullet_lists": fmt.number_bullet_lists,
    "detectable_format:number_highlighted_sections": fmt.number_highlighted_sections,
    "detectable_format:title": fmt.title,
    "keywords:existence": content.existence,
    "keywords:forbidden_words": content.forbidden_words,
    "keywords:frequency": content.frequency,
    "keywords:letter_frequency": content.letter_frequency,
    "language:response_language": content.response_language,
    "length_constraints:nth_paragraph_first_word": content.nth_paragraph_first_word,
    "length_constraints:number_paragraphs": content.number_paragraphs,
    "length_constraints:number_sentences": content.number_sentences,
    "length_constraints:number_words": content.number_words,
    "punctuation:no_comma": fmt.no_comma,
    "startend:end_checker": fmt.end_checker,
    "startend:quotation": fmt.quotation,
}
"""Instruction id -> `check(response, **kwargs) -> bool`, kwargs named as in the reference."""


def get_checker(instruction_id: str) -> Checker:
    """The checker for an instruction id; `KeyError` listing the valid ids for an unknown one."""
    if instruction_id not in INSTRUCTIONS:
        raise KeyError(f"unknown IFEval instruction {instruction_id!r}; valid: {sorted(INSTRUCTIONS)}")
    return INSTRUCTIONS[instruction_id]


def clean_kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """Drop None-valued arguments (the Hugging Face copy of IFEval fills unused arguments with None)."""
    return {k: v for k, v in (kwargs or {}).items() if v is not None}


def check_instruction(instruction_id: str, response: str, kwargs: dict[str, Any] | None = None) -> bool:
    """Strict check of one instruction: False for a blank response, else the checker's verdict."""
    checker = get_checker(instruction_id)
    return bool(response.strip()) and bool(checker(response, **clean_kwargs(kwargs)))


def loose_variants(response: str) -> list[str]:
    """The eight responses the reference's loose mode tries (evaluation_lib.test_instruction_following_loose)."""
    lines = response.split("\n")
    remove_first = "\n".join(lines[1:]).strip()
    remove_last = "\n".join(lines[:-1]).strip()
    remove_both = "\n".join(lines[1:-1]).strip()
    variants = [response, remove_first, remove_last, remove_both]
    return [response, response.replace("*", ""), *variants[1:], *(v.replace("*", "") for v in variants[1:])]


def follow_strict(response: str, instruction_ids: list[str], kwargs_list: list[dict[str, Any]]) -> list[bool]:
    """Per-instruction strict verdicts for one response."""
    _check_lengths(instruction_ids, kwargs_list)
    return [check_instruction(i, response, kw) for i, kw in zip(instruction_ids, kwargs_list)]


def follow_loose(response: str, instruction_ids: list[str], kwargs_list: list[dict[str, Any]]) -> list[bool]:
    """Per-instruction loose verdicts: followed when any of the eight variants passes the strict check."""
    _check_lengths(instruction_ids, kwargs_list)
    variants = loose_variants(response)
    return [any(check_instruction(i, v, kw) for v in variants) for i, kw in zip(instruction_ids, kwargs_list)]


def _check_lengths(instruction_ids: list[str], kwargs_list: list[dict[str, Any]]) -> None:
    """One kwargs dict per instruction id, or an error (zip would silently drop instructions)."""
    if len(instruction_ids) != len(kwargs_list):
        raise ValueError(f"{len(instruction_ids)} instruction ids but {len(kwargs_list)} kwargs dicts")
