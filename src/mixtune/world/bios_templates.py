"""The 50 sentence templates per attribute of bioS(N) (Physics of LMs 3.3, METHODS §8).

Each template starts with `{subject}` (the full name in a biography's first sentence, "He"/"She" in the others, as in
the paper's bioS) and ends with ` {value}.`, so a value is always predicted from the sentence prefix alone and the
only gendered words of a biography are its subject pronouns. Templates are built as 10 phrasings × 5 modifiers
(the empty one included); the `{m}` slot takes the modifier. Two attributes never share a whole prefix: the word
before the value (on / in / at / for / by / from ...) together with the verb tells which attribute follows.
"""

from __future__ import annotations

_PHRASINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # attribute -> (phrasings with a {m} slot, modifiers)
    "birth_date": ((
        "{subject} was {m}born on {value}.", "{subject} {m}came into this world on {value}.",
        "{subject} {m}celebrates a birthday on {value}.", "{subject} was {m}brought into the world on {value}.",
        "{subject} {m}arrived in the world on {value}.", "{subject} {m}entered life on {value}.",
        "{subject} {m}took a first breath on {value}.", "{subject} was {m}delivered on {value}.",
        "{subject} {m}has a birthday on {value}.", "{subject} {m}began life on {value}.",
    ), ("", "reportedly ", "indeed ", "actually ", "officially ")),
    "birth_city": ((
        "{subject} was {m}born in {value}.", "{subject} {m}spent the early years in {value}.",
        "{subject} {m}grew up in {value}.", "{subject} {m}comes from {value}.", "{subject} was {m}raised in {value}.",
        "{subject} {m}hails from {value}.", "{subject} {m}spent childhood in {value}.",
        "{subject} {m}started life in {value}.", "{subject} was {m}brought up in {value}.",
        "{subject} {m}first saw the light of day in {value}.",
    ), ("", "originally ", "actually ", "reportedly ", "indeed ")),
    "university": ((
        "{subject} {m}studied at {value}.", "{subject} {m}graduated from {value}.", "{subject} {m}attended {value}.",
        "{subject} {m}received an education at {value}.", "{subject} was {m}a student at {value}.",
        "{subject} {m}earned a degree from {value}.", "{subject} {m}completed college at {value}.",
        "{subject} {m}went to {value}.", "{subject} was {m}educated at {value}.", "{subject} {m}enrolled at {value}.",
    ), ("", "once ", "proudly ", "later ", "successfully ")),
    "major": ((
        "{subject} {m}majored in {value}.", "{subject} {m}focused on {value}.",
        "{subject} {m}earned a degree in {value}.", "{subject} {m}studied the subject of {value}.",
        "{subject} {m}specialized in {value}.", "{subject} {m}chose to study {value}.",
        "{subject} {m}completed a program in {value}.", "{subject} {m}concentrated on {value}.",
        "{subject} {m}pursued a major in {value}.", "{subject} {m}did coursework in {value}.",
    ), ("", "mainly ", "happily ", "eventually ", "seriously ")),
    "employer": ((
        "{subject} {m}works for {value}.", "{subject} is {m}employed by {value}.", "{subject} {m}has a job at {value}.",
        "{subject} is {m}on the staff of {value}.", "{subject} {m}earns a living at {value}.",
        "{subject} {m}holds a position at {value}.", "{subject} is {m}a member of the team at {value}.",
        "{subject} {m}works at {value}.", "{subject} {m}serves the company {value}.",
        "{subject} {m}draws a salary from {value}.",
    ), ("", "currently ", "now ", "happily ", "proudly ")),
    "work_city": ((
        "{subject} {m}works in {value}.", "{subject} {m}has a job in {value}.", "{subject} {m}goes to work in {value}.",
        "{subject} {m}commutes to an office in {value}.", "{subject} is {m}based in {value}.",
        "{subject} {m}works out of {value}.", "{subject} is {m}employed in {value}.",
        "{subject} {m}spends working days in {value}.", "{subject} {m}lives and works in {value}.",
        "{subject} {m}has an office in {value}.",
    ), ("", "currently ", "now ", "mostly ", "usually ")),
}

BIOS_TEMPLATES: dict[str, tuple[str, ...]] = {
    attr: tuple(p.replace("{m}", m) for p in phrasings for m in modifiers)
    for attr, (phrasings, modifiers) in _PHRASINGS.items()
}
"""attribute -> its 50 templates (`{subject}` first, ` {value}.` last)."""

for _attr, _templates in BIOS_TEMPLATES.items():
    if len(set(_templates)) != 50 or not all(t.startswith("{subject} ") and t.endswith(" {value}.")
                                             for t in _templates):
        raise AssertionError(f"bioS templates of {_attr}: need 50 distinct '{{subject}} ... {{value}}.' templates")
