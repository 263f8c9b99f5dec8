"""Verifiable instructions (the mini-lab's general ability) in IFEval format, with responses that follow them.

A prompt is a base request ("Write a short note about the sea.") plus one or two instructions with real IFEval ids
and kwargs names. Responses are built constructively from the sentence generator of `text` (keywords placed,
sentence and word counts chosen, then title / bullets / postscript / end phrase / quotes / case applied) and
checked with `ifcheck`; a draw that cannot be satisfied is redrawn, so every benchmark prompt is satisfiable too.
The disjointness key is (base request, instruction ids).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from mixtune.world import ifcheck, pools
from mixtune.world.text import keyword_sentence, sentence, title

BASE_REQUESTS = ("Write a short note about {t}.", "Describe {t} in a few sentences.", "Tell me about {t}.",
                 "Write a short paragraph about {t}.", "Write a few words about {t}.")
PHRASES: dict[str, tuple[str, ...]] = {
    "change_case:english_lowercase": (
        "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
        "Write everything in lowercase letters.", "Use only lowercase letters in your response."),
    "change_case:english_capital": (
        "Your entire response should be in English, and in all capital letters.",
        "Write everything in capital letters.", "Use only capital letters in your response."),
    "punctuation:no_comma": (
        "Do not use any commas in your response.", "In your entire response, refrain from the use of any commas.",
        "Avoid commas."),
    "startend:end_checker": (
        "Finish your response with this exact phrase: {end_phrase} No other words should follow this phrase.",
        "End your response with the exact phrase: {end_phrase}", "Your last words must be: {end_phrase}"),
    "startend:quotation": (
        "Wrap your entire response with double quotation marks.", "Put your whole answer in double quotes.",
        "Enclose the entire response in double quotation marks."),
    "keywords:existence": (
        "Include the keywords {kw0} and {kw1} in the response.", "Make sure to use the words {kw0} and {kw1}.",
        "Your answer must mention {kw0} and {kw1}."),
    "keywords:frequency": (
        "In your response, the word {keyword} should appear {relation} {frequency} times.",
        "Use the word {keyword} {relation} {frequency} times."),
    "length_constraints:number_words": (
        "Answer with {relation} {num_words} words.", "Your response should contain {relation} {num_words} words.",
        "Use {relation} {num_words} words."),
    "length_constraints:number_sentences": (
        "Your response should contain {relation} {num_sentences} sentences.",
        "Write {relation} {num_sentences} sentences.", "Answer in {relation} {num_sentences} sentences."),
    "detectable_format:title": (
        "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
        "Give your answer a title in double angular brackets, like <<my title>>.",
        "Start with a title wrapped in double angular brackets."),
    "detectable_content:postscript": (
        "At the end of your response, please explicitly add a postscript starting with {postscript_marker}",
        "Add a postscript starting with {postscript_marker} at the end.",
        "End with a postscript that starts with {postscript_marker}"),
    "detectable_format:number_bullet_lists": (
        ("Your answer must contain exactly {num_bullets} bullet points. Use markdown bullet points such as: * This "
         "is a point."), "Answer with exactly {num_bullets} bullet points in markdown, each starting with *.",
        "Use exactly {num_bullets} markdown bullet points."),
}
INSTRUCTION_IDS = tuple(PHRASES)
CONFLICTS = {frozenset(p) for p in (
    ("change_case:english_lowercase", "change_case:english_capital"),
    ("startend:quotation", "startend:end_checker"), ("startend:quotation", "detectable_format:number_bullet_lists"),
    ("startend:end_checker", "detectable_content:postscript"),
    ("length_constraints:number_words", "length_constraints:number_sentences"),
    ("length_constraints:number_words", "detectable_format:number_bullet_lists"),
    ("length_constraints:number_sentences", "detectable_format:number_bullet_lists"),
    ("keywords:existence", "keywords:frequency"),
)}


@dataclass(frozen=True)
class InstructExample:
    """An IFEval-format prompt and a response that follows every instruction."""

    key: tuple
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]
    response: str
    topic: tuple = ()
    """The pool topic the prompt and response are about (preference pairs build a violating response on it)."""


def _draw_kwargs(rng: random.Random, iid: str) -> dict[str, Any]:
    """IFEval kwargs (real key names) for instruction `iid`."""
    if iid == "startend:end_checker":
        return {"end_phrase": rng.choice(pools.END_PHRASES)}
    if iid == "keywords:existence":
        return {"keywords": rng.sample(pools.KEYWORDS, 2)}
    if iid == "keywords:frequency":
        relation = rng.choice(("at least", "less than"))
        return {"keyword": rng.choice(pools.KEYWORDS), "frequency": rng.choice((2, 3)), "relation": relation}
    if iid == "length_constraints:number_words":
        relation = rng.choice(("at least", "less than"))
        return {"relation": relation, "num_words": rng.choice((30, 40, 50) if relation == "at least" else (20, 30, 40))}
    if iid == "length_constraints:number_sentences":
        relation = rng.choice(("at least", "less than"))
        return {"relation": relation, "num_sentences": rng.choice((4, 5, 6) if relation == "at least" else (2, 3, 4))}
    if iid == "detectable_content:postscript":
        return {"postscript_marker": "P.S."}
    if iid == "detectable_format:number_bullet_lists":
        return {"num_bullets": rng.randint(2, 5)}
    return {}


def _phrase(rng: random.Random, iid: str, kw: dict[str, Any]) -> str:
    fill = dict(kw)
    if "keywords" in kw:
        fill.update(kw0=kw["keywords"][0], kw1=kw["keywords"][1])
    return rng.choice(PHRASES[iid]).format(**fill)


def _sentence_range(spec: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """How many body sentences to write, from the length instructions (before the end phrase is added)."""
    if "detectable_format:number_bullet_lists" in spec:
        n = spec["detectable_format:number_bullet_lists"]["num_bullets"]
        return n, n
    if (kw := spec.get("length_constraints:number_sentences")) is not None:
        n = kw["num_sentences"]
        return (n, n + 1) if kw["relation"] == "at least" else (1, n - 1)
    if (kw := spec.get("length_constraints:number_words")) is not None:
        n = kw["num_words"]
        return (n // 6 + 1, n // 6 + 3) if kw["relation"] == "at least" else (1, max(1, n // 10))
    return 2, 4


def build_response(rng: random.Random, topic: tuple, spec: dict[str, dict[str, Any]]) -> str:
    """A response about `topic` meant to follow `spec` (id -> kwargs); the caller checks it."""
    no_comma = "punctuation:no_comma" in spec
    keyword_uses: list[str] = []
    if (kw := spec.get("keywords:existence")) is not None:
        keyword_uses += kw["keywords"]
    if (kw := spec.get("keywords:frequency")) is not None:
        f = kw["frequency"]
        keyword_uses += [kw["keyword"]] * (f if kw["relation"] == "at least" else rng.randint(0, f - 1))
    lo, hi = _sentence_range(spec)
    n = max(rng.randint(lo, hi), len(keyword_uses))
    body = [keyword_sentence(rng, topic, k) for k in keyword_uses]
    body += [sentence(rng, topic, comma=not no_comma) for _ in range(n - len(body))]
    rng.shuffle(body)
    if "detectable_format:number_bullet_lists" in spec:
        text = "\n".join(f"* {s}" for s in body)
    else:
        text = " ".join(body)
    if "detectable_format:title" in spec:
        text = f"<<{title(rng, topic)}>>\n{text}"
    if "startend:end_checker" in spec:
        text += "\n" + spec["startend:end_checker"]["end_phrase"]
    if "detectable_content:postscript" in spec:
        text += f"\nP.S. {rng.choice(pools.POSTSCRIPTS)}"
    if "startend:quotation" in spec:
        text = f'"{text}"'
    if "change_case:english_lowercase" in spec:
        text = text.lower()
    if "change_case:english_capital" in spec:
        text = text.upper()
    return text


def _draw_ids(rng: random.Random) -> tuple[str, ...]:
    while True:
        ids = tuple(rng.sample(INSTRUCTION_IDS, rng.choice((1, 2))))
        if len(ids) == 1 or frozenset(ids) not in CONFLICTS:
            return ids


def make_example(rng: random.Random, exclude: set) -> InstructExample:
    """One prompt + following response whose key is not in `exclude`; redraws until both hold.

    Raises RuntimeError when `exclude` leaves (almost) nothing to draw.
    """
    for _ in range(100_000):
        topic = rng.choice(pools.TOPICS)
        base = rng.choice(BASE_REQUESTS).format(t=topic[0])
        ids = _draw_ids(rng)
        key = (base, tuple(sorted(ids)))
        if key in exclude:
            continue
        kwargs = tuple(_draw_kwargs(rng, i) for i in ids)
        spec = dict(zip(ids, kwargs))
        for _ in range(20):
            response = build_response(rng, topic, spec)
            if all(ifcheck.follows(response, list(ids), list(kwargs))):
                break
        else:
            continue  # unsatisfiable kwargs draw (e.g. three keywords in under 20 words): draw again
        prompt = " ".join([base] + [_phrase(rng, i, k) for i, k in zip(ids, kwargs)])
        return InstructExample(key=key, prompt=prompt, instruction_ids=ids, kwargs=kwargs, response=response,
                               topic=topic)
    raise RuntimeError("cannot draw an instruction example outside the excluded keys")


def make_examples(n: int, rng: random.Random, exclude: set | None = None, unique_keys: bool = False
                  ) -> list[InstructExample]:
    """`n` examples, none with a key in `exclude`; `unique_keys` also makes their keys distinct (benchmark).

    Prompts are always distinct. Raises RuntimeError when the space runs out.
    """
    taken = set(exclude or ())
    prompts: set[str] = set()
    out: list[InstructExample] = []
    misses = 0
    while len(out) < n:
        ex = make_example(rng, taken)
        if ex.prompt in prompts:
            misses += 1
            if misses > 50 * n + 1000:
                raise RuntimeError(f"cannot draw {n} distinct instruction prompts")
            continue
        prompts.add(ex.prompt)
        if unique_keys:
            taken.add(ex.key)
        out.append(ex)
    return out
