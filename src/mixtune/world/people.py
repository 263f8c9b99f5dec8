"""bioS-style people (Physics of LMs 3.1/3.3, METHODS §8), scaled down: facts, biographies and closed-book questions.

Each person has a unique full name and six attributes (birth date, birth city, university, major, employer, work
city = the employer's city). A biography states every attribute once, each with a template re-drawn per exposure
and the sentences in a fresh order; every sentence names the person in full (the "fullname" augmentation of 3.1,
which helps a small model extract the facts afterwards).

bioS(N) for the knowledge-capacity analysis (Physics of LMs 3.3, METHODS §8) uses the same people with the paper's
pool sizes (`BIOS_POOLS`, gender drawn independently of the first name) and the paper's biography form
(`bios_biography`): 50 templates per attribute, the full name in the first sentence and "He"/"She" after it, and the
character spans of the name, the values and the pronouns, which the capacity formula scores.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

from mixtune.world import pools
from mixtune.world.bios_templates import BIOS_TEMPLATES

ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer", "work_city")

# Several sentence templates per attribute; {name} is the full name, {value} the attribute's value.
BIO_TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_date": (
        "{name} was born on {value}.", "{name} came into this world on {value}.",
        "The birthday of {name} is {value}.", "{name} celebrates a birthday on {value}.",
        "{name} was born on the date {value}.",
    ),
    "birth_city": (
        "{name} was born in {value}.", "{name} spent the early years in {value}.",
        "{name} grew up in {value}.", "The birthplace of {name} is {value}.", "{name} is a native of {value}.",
    ),
    "university": (
        "{name} studied at {value}.", "{name} graduated from {value}.", "{name} attended {value}.",
        "{name} received an education at {value}.", "{name} was a student at {value}.",
    ),
    "major": (
        "{name} majored in {value}.", "{name} focused on {value} at college.", "{name} earned a degree in {value}.",
        "The field of study of {name} was {value}.", "{name} chose {value} as a major.",
    ),
    "employer": (
        "{name} works for {value}.", "{name} is employed by {value}.", "{name} has a job at {value}.",
        "{name} is a member of the staff of {value}.", "The employer of {name} is {value}.",
    ),
    "work_city": (
        "{name} works in {value}.", "{name} has a job in {value}.", "{name} goes to work in {value}.",
        "The workplace of {name} is in {value}.", "{name} commutes to an office in {value}.",
    ),
}

# One question per attribute (as in Physics of LMs 3.1): the answer is the attribute's value.
QUESTIONS: dict[str, str] = {
    "birth_date": "What is the birth date of {name}?",
    "birth_city": "What is the birth city of {name}?",
    "university": "Which university did {name} attend?",
    "major": "What did {name} study?",
    "employer": "Which company does {name} work for?",
    "work_city": "In which city does {name} work?",
}


@dataclass(frozen=True)
class Person:
    """One person of the world; `index` is the position in the seeded draw."""

    index: int
    name: str
    gender: str
    birth_date: str
    birth_city: str
    university: str
    major: str
    employer: str
    work_city: str

    def attribute(self, key: str) -> str:
        """The value of attribute `key` (one of ATTRIBUTES)."""
        return getattr(self, key)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PeoplePools:
    """The pools a population is drawn from. First names are drawn from the pool of the person's gender (give both
    the same pool to draw gender independently of the name, as bioS does)."""

    first_female: tuple[str, ...]
    first_male: tuple[str, ...]
    middle: tuple[str, ...]
    last: tuple[str, ...]
    years: tuple[int, int]
    """Birth years, inclusive."""
    cities: tuple[str, ...]
    universities: tuple[str, ...]
    majors: tuple[str, ...]
    employers: tuple[tuple[str, str], ...]
    """(employer, work city): the work city is a function of the employer."""

    def name_space(self) -> int:
        """N0: the number of distinct full names."""
        return len(set(self.first_female) | set(self.first_male)) * len(self.middle) * len(self.last)

    def attribute_bits(self) -> dict[str, float]:
        """log2 of each attribute's number of values (gender 2; work city 0 bits: the employer fixes it). Their sum
        is log2 S0 of METHODS §8 when the pools have the paper's sizes."""
        days = 12 * 28 * (self.years[1] - self.years[0] + 1)
        sizes = {"gender": 2, "birth_date": days, "birth_city": len(self.cities),
                 "university": len(self.universities), "major": len(self.majors), "employer": len(self.employers),
                 "work_city": 1}
        return {k: math.log2(v) for k, v in sizes.items()}


MINILAB_POOLS = PeoplePools(pools.FIRST_NAMES_FEMALE, pools.FIRST_NAMES_MALE, pools.MIDDLE_NAMES, pools.LAST_NAMES,
                            (1950, 2005), pools.CITIES, pools.UNIVERSITIES, pools.MAJORS, pools.EMPLOYERS)
"""The mini-lab world's pools (its people files stay byte-identical)."""
BIOS_POOLS = PeoplePools(pools.BIOS_FIRST_NAMES, pools.BIOS_FIRST_NAMES, pools.MIDDLE_NAMES, pools.LAST_NAMES,
                         pools.BIOS_YEARS, pools.BIOS_CITIES, pools.BIOS_UNIVERSITIES, pools.BIOS_MAJORS,
                         pools.BIOS_EMPLOYERS)
"""bioS(N) pools: the paper's attribute sizes (12·28·200 dates, 200 cities, 300 universities, 100 majors, 263
employers), the mini-lab's names (N0 = 64·28·45 = 80,640)."""


def make_people(n: int, seed: int, people_pools: PeoplePools = MINILAB_POOLS) -> list[Person]:
    """`n` people with unique full names, drawn deterministically from `seed`. The first k people of a draw do not
    depend on n (a larger draw extends a smaller one).

    Raises ValueError when the name pools cannot give `n` unique names.
    """
    pp = people_pools
    n_names = pp.name_space()
    if n > n_names // 2:  # rejection sampling stays fast while at most half of the space is taken
        raise ValueError(f"n_people={n} is too large for the name pools (at most {n_names // 2})")
    rng = random.Random(f"people/{seed}")
    seen: set[str] = set()
    people = []
    while len(people) < n:
        gender = rng.choice(("female", "male"))
        first = rng.choice(pp.first_female if gender == "female" else pp.first_male)
        name = f"{first} {rng.choice(pp.middle)} {rng.choice(pp.last)}"
        if name in seen:
            continue
        seen.add(name)
        employer, work_city = rng.choice(pp.employers)
        birth_date = f"{rng.choice(pools.MONTHS)} {rng.randint(1, 28)}, {rng.randint(*pp.years)}"
        people.append(Person(
            index=len(people), name=name, gender=gender, birth_date=birth_date,
            birth_city=rng.choice(pp.cities), university=rng.choice(pp.universities),
            major=rng.choice(pp.majors), employer=employer, work_city=work_city,
        ))
    return people


def biography(person: Person, rng: random.Random) -> str:
    """One biography: every attribute once, templates and sentence order drawn from `rng`."""
    keys = list(ATTRIBUTES)
    rng.shuffle(keys)
    sentences = [rng.choice(BIO_TEMPLATES[k]).format(name=person.name, value=person.attribute(k)) for k in keys]
    return " ".join(sentences)


@dataclass(frozen=True)
class Biography:
    """A bioS biography and where its scored parts are (character spans [start, end) into `text`)."""

    text: str
    name_span: tuple[int, int]
    """The full name at the start of the first sentence."""
    value_spans: dict[str, tuple[int, int]]
    """attribute -> the span of its value."""
    pronoun_spans: tuple[tuple[int, int], ...]
    """The subject pronouns of sentences 2-6 (the first one reveals the gender)."""


def bios_biography(person: Person, rng: random.Random) -> Biography:
    """The paper's bioS form: six sentences in a random order, each from one of 50 templates drawn from `rng`; the
    first names the person in full, the others start with "He"/"She"."""
    keys = list(ATTRIBUTES)
    rng.shuffle(keys)
    pronoun = "She" if person.gender == "female" else "He"
    text, value_spans, pronoun_spans = "", {}, []
    for i, key in enumerate(keys):
        subject = person.name if i == 0 else pronoun
        if i:
            text += " "
            pronoun_spans.append((len(text), len(text) + len(subject)))
        # every template ends with " {value}.": the value is predicted from the sentence prefix alone
        prefix = rng.choice(BIOS_TEMPLATES[key]).removesuffix("{value}.").format(subject=subject)
        value = person.attribute(key)
        value_spans[key] = (len(text) + len(prefix), len(text) + len(prefix) + len(value))
        text += prefix + value + "."
    return Biography(text, (0, len(person.name)), value_spans, tuple(pronoun_spans))


def question(person: Person, key: str) -> tuple[str, str]:
    """(question, answer) about attribute `key` of `person`."""
    return QUESTIONS[key].format(name=person.name), person.attribute(key)


def split_people(people: list[Person], train_fraction: float, seed: int) -> tuple[list[Person], list[Person]]:
    """Disjoint (train, held-out) people: SFT asks about the first, the benchmark about the second (3.1)."""
    order = list(people)
    random.Random(f"people-split/{seed}").shuffle(order)
    n_train = max(1, min(len(order) - 1, round(train_fraction * len(order))))
    train = sorted(order[:n_train], key=lambda p: p.index)
    held_out = sorted(order[n_train:], key=lambda p: p.index)
    return train, held_out
