"""Simple templated sentences about topics: the plain text of the corpus and the bodies of instruction responses.

Sentences contain no periods except the final one and no abbreviations, so IFEval's sentence splitter counts them
exactly; some templates contain commas (so `punctuation:no_comma` is a real constraint) and `comma=False` avoids
those.
"""

from __future__ import annotations

import random

from mixtune.world import pools

PLAIN = (
    "{T} is {a}.", "{T} is very {a} {place}.", "Many {people} {verb} {t}.", "{P} often {verb} {t} {place}.",
    "I think that {t} is {a}.", "{T} looks {a} {place}.", "People say that {t} is {a} and {b}.",
    "Most {people} know that {t} is {a}.", "{T} feels {a} {place}.", "There is something {a} about {t}.",
)
WITH_COMMA = (
    "{T} is {a}, {b} and {c}.", "{Place}, {t} is {a}.", "Some {people} {verb} {t}, and others do not.",
    "{T} is {a}, but it is also {b}.", "{Place}, many {people} {verb} {t}.",
)
KEYWORD_SENTENCES = (
    "{T} reminds me of a {k}.", "I once saw a {k} near {t}.", "There is a {k} close to {t}.",
    "A {k} fits well with {t}.", "You may find a {k} by {t}.", "The word {k} comes to mind with {t}.",
)


def cap(text: str) -> str:
    """First letter upper-cased, the rest unchanged."""
    return text[:1].upper() + text[1:]


def sentence(rng: random.Random, topic: tuple[str, tuple[str, ...]], comma: bool = True) -> str:
    """One sentence about `topic` (noun phrase, adjectives); `comma=False` never writes a comma."""
    noun, adjectives = topic
    templates = PLAIN + WITH_COMMA if comma else PLAIN
    a, b, c = rng.sample(adjectives, 3)
    place = rng.choice(pools.PLACES)
    people = rng.choice(pools.PEOPLE_WORDS)
    return rng.choice(templates).format(
        T=cap(noun), t=noun, a=a, b=b, c=c, place=place, Place=cap(place), people=people, P=cap(people),
        verb=rng.choice(pools.VERBS),
    )


def keyword_sentence(rng: random.Random, topic: tuple[str, tuple[str, ...]], keyword: str) -> str:
    """A sentence about `topic` that contains `keyword` exactly once."""
    return rng.choice(KEYWORD_SENTENCES).format(T=cap(topic[0]), t=topic[0], k=keyword)


def title(rng: random.Random, topic: tuple[str, tuple[str, ...]]) -> str:
    """A short title for a text about `topic` (no brackets)."""
    noun, adjectives = topic
    return rng.choice(("A note about {t}", "About {t}", "{A} {n}", "Thoughts on {t}")).format(
        t=noun, A=cap(rng.choice(adjectives)), n=noun.split(" ", 1)[-1])


def paragraph(rng: random.Random) -> str:
    """A pre-training document: 3-6 sentences about one topic, sometimes with a title, bullets or a postscript."""
    topic = rng.choice(pools.TOPICS)
    sentences = [sentence(rng, topic) for _ in range(rng.randint(3, 6))]
    if rng.random() < 0.15:
        sentences.insert(rng.randrange(len(sentences) + 1), keyword_sentence(rng, topic, rng.choice(pools.KEYWORDS)))
    style = rng.random()
    if style < 0.1:
        return f"<<{title(rng, topic)}>>\n" + " ".join(sentences)
    if style < 0.2:
        return cap(topic[0]) + ":\n" + "\n".join(f"* {s}" for s in sentences)
    if style < 0.3:
        return " ".join(sentences) + f"\nP.S. {rng.choice(pools.POSTSCRIPTS)}"
    return " ".join(sentences)


def junk_words() -> tuple[str, ...]:
    """The vocabulary of junk paragraphs: every single word of the topic, keyword and verb pools (sorted, unique)."""
    words = {w for noun, adjectives in pools.TOPICS for w in (*noun.split()[1:], *adjectives)}
    words |= set(pools.KEYWORDS) | set(pools.VERBS) | set(pools.PEOPLE_WORDS)
    return tuple(sorted(words))


def junk_paragraph(rng: random.Random, words: tuple[str, ...], n_min: int = 20, n_max: int = 60) -> str:
    """Random words drawn uniformly (no grammar, nothing to memorise): the junk of the knowledge-capacity analysis
    (Physics of LMs 3.3 mixes data without useful knowledge into the training tokens)."""
    return cap(" ".join(rng.choices(words, k=rng.randint(n_min, n_max)))) + "."
