"""bioS-style people (Physics of LMs 3.1/3.3, METHODS §8), scaled down: facts, biographies and closed-book questions.

Each person has a unique full name and six attributes (birth date, birth city, university, major, employer, work
city = the employer's city). A biography states every attribute once, each with a template re-drawn per exposure
and the sentences in a fresh order; every sentence names the person in full (the "fullname" augmentation of 3.1,
which helps a small model extract the facts afterwards).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from mixtune.world import pools

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


def make_people(n: int, seed: int) -> list[Person]:
    """`n` people with unique full names, drawn deterministically from `seed`.

    Raises ValueError when the name pools cannot give `n` unique names.
    """
    n_names = (len(pools.FIRST_NAMES_FEMALE) + len(pools.FIRST_NAMES_MALE)) * len(pools.MIDDLE_NAMES) * len(
        pools.LAST_NAMES)
    if n > n_names // 2:  # rejection sampling stays fast while at most half of the space is taken
        raise ValueError(f"n_people={n} is too large for the name pools (at most {n_names // 2})")
    rng = random.Random(f"people/{seed}")
    seen: set[str] = set()
    people = []
    while len(people) < n:
        gender = rng.choice(("female", "male"))
        first = rng.choice(pools.FIRST_NAMES_FEMALE if gender == "female" else pools.FIRST_NAMES_MALE)
        name = f"{first} {rng.choice(pools.MIDDLE_NAMES)} {rng.choice(pools.LAST_NAMES)}"
        if name in seen:
            continue
        seen.add(name)
        employer, work_city = rng.choice(pools.EMPLOYERS)
        birth_date = f"{rng.choice(pools.MONTHS)} {rng.randint(1, 28)}, {rng.randint(1950, 2005)}"
        people.append(Person(
            index=len(people), name=name, gender=gender, birth_date=birth_date,
            birth_city=rng.choice(pools.CITIES), university=rng.choice(pools.UNIVERSITIES),
            major=rng.choice(pools.MAJORS), employer=employer, work_city=work_city,
        ))
    return people


def biography(person: Person, rng: random.Random) -> str:
    """One biography: every attribute once, templates and sentence order drawn from `rng`."""
    keys = list(ATTRIBUTES)
    rng.shuffle(keys)
    sentences = [rng.choice(BIO_TEMPLATES[k]).format(name=person.name, value=person.attribute(k)) for k in keys]
    return " ".join(sentences)


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
