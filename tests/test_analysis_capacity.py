"""Knowledge capacity (analysis/bits.py, capacity_train.py, capacity.py): the tokens the formula scores, the formula
on hand-worked numbers and on a model whose losses we set, the exposure stream, and a tiny end-to-end grid."""

from __future__ import annotations

import math
import random

import pytest
import torch

from mixtune.analysis import bits
from mixtune.analysis.capacity_train import exposure_stream, measure_bits, population, tokenizer_texts
from mixtune.world import people
from mixtune.world.bios_templates import BIOS_TEMPLATES

LN2 = math.log(2)


def test_token_roles_hand_worked():
    text = "Ann Lee Roe works for Acme Labs. She was born in Oslo. She majored in Law."
    bio = people.Biography(text, name_span=(0, 11), value_spans={"employer": (22, 31), "birth_city": (49, 53),
                                                                  "major": (70, 73)},
                           pronoun_spans=((33, 36), (55, 58)))
    assert text[22:31] == "Acme Labs" and text[49:53] == "Oslo" and text[70:73] == "Law" and text[55:58] == "She"
    # byte-level BPE pieces: a word token carries the space before it
    offsets = [(0, 3), (3, 7), (7, 11), (11, 17), (17, 21), (21, 26), (26, 31), (31, 32), (32, 36), (36, 40),
               (40, 45), (45, 48), (48, 53), (53, 54), (54, 58), (58, 66), (66, 69), (69, 73), (73, 74)]
    assert bits.token_roles(offsets, bio) == [
        "name", "name", "name", None, None, "employer", "employer", None, "gender", None,
        None, None, "birth_city", None, None, None, None, "major", None]  # only the first pronoun is scored


def test_a_token_over_two_scored_spans_is_an_error():
    bio = people.Biography("AB", name_span=(0, 1), value_spans={"major": (1, 2)}, pronoun_spans=())
    with pytest.raises(ValueError, match="overlaps two scored spans"):
        bits.token_roles([(0, 2)], bio)


@pytest.fixture(scope="module")
def bios_tokenizer(tmp_path_factory):
    from mixtune.data.tokenizer_train import train_tokenizer

    root = tmp_path_factory.mktemp("bios-tok")
    corpus = root / "text.txt"
    corpus.write_text("\n".join(tokenizer_texts(60, seed=0, n_junk=200)))
    return train_tokenizer([corpus], vocab_size=600, min_frequency=2, out_dir=root / "tokenizer")


def test_score_plan_scores_exactly_the_name_values_and_first_pronoun(bios_tokenizer):
    rng = random.Random(0)
    for person in population(20, seed=0):
        bio = people.bios_biography(person, rng)
        (plan,) = bits.score_plan(bios_tokenizer, [bio])
        picked = {role: bios_tokenizer.decode([t for t, r in zip(plan.ids, plan.roles) if r == role])
                  for role in set(plan.roles) - {None}}
        assert picked.pop("name") == person.name
        assert picked.pop("gender").strip() == ("She" if person.gender == "female" else "He")
        assert {k: v.strip() for k, v in picked.items()} == {a: person.attribute(a) for a in people.ATTRIBUTES}
        assert bios_tokenizer.decode(plan.ids) == bio.text


def test_bios_biography_follows_the_paper_form():
    person = population(1, seed=3)[0]
    bio = people.bios_biography(person, random.Random(1))
    sentences = bio.text.split(". ")
    assert len(sentences) == 6 and sentences[0].startswith(person.name)
    pronoun = "She" if person.gender == "female" else "He"
    assert all(s.startswith(pronoun + " ") for s in sentences[1:]) and person.name not in " ".join(sentences[1:])
    assert {a: bio.text[s:e] for a, (s, e) in bio.value_spans.items()} == {a: person.attribute(a)
                                                                           for a in people.ATTRIBUTES}
    assert all(len(t) == 50 for t in BIOS_TEMPLATES.values())


def test_bios_pools_have_the_paper_sizes():
    pp = people.BIOS_POOLS
    assert pp.name_space() == 64 * 28 * 45
    assert sum(pp.attribute_bits().values()) == pytest.approx(math.log2(2 * 12 * 28 * 200 * 200 * 300 * 100 * 263))
    assert sum(pp.attribute_bits().values()) == pytest.approx(47.6, abs=0.05)  # METHODS §8: log2 S0 ≈ 47.6
    persons = population(300, seed=0)
    assert len({p.name for p in persons}) == 300
    assert {p.gender for p in persons if p.name.split()[0] == "Alice"} == {"female", "male"}  # gender is drawn apart


def test_capacity_bits_hand_worked():
    per_person = [{"name": 2 * LN2, "gender": LN2, "birth_city": 3 * LN2},
                  {"name": 4 * LN2, "gender": 0.0, "birth_city": 1 * LN2}]
    out = bits.capacity_bits(per_person, log2_n0=10.0, attribute_bits={"gender": 1.0, "birth_city": 5.0})
    # name: (10 - 2) + (10 - 4) = 14; values: (6 - 4) + (6 - 1) = 7
    assert out["name_bits"] == pytest.approx(14.0) and out["value_bits"] == pytest.approx(7.0)
    assert out["bits"] == pytest.approx(21.0)
    assert out["bits/gender"] == pytest.approx(1.0) and out["bits/birth_city"] == pytest.approx(6.0)
    assert out["p1"] == pytest.approx(3 * LN2) and out["p2"] == pytest.approx(2.5 * LN2)
    assert bits.max_bits(4, 10.0, 6.0) == pytest.approx(4 * (10 - 2 + 6))
    assert bits.employer_city_bits(["a", "b", "a"], 8) == pytest.approx(2 * 3)


class HalfSureModel(torch.nn.Module):
    """Puts probability 1/2 on the true next token at every position (it peeks at the input): each scored token
    then costs exactly one bit."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        b, t = input_ids.shape
        rest = math.log(0.5 / (self.vocab - 1))
        logits = torch.full((b, t, self.vocab), rest)
        nxt = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)
        logits.scatter_(2, nxt.unsqueeze(-1), math.log(0.5))
        return type("Out", (), {"logits": logits})()


def test_measured_bits_of_a_model_whose_losses_we_set(bios_tokenizer):
    persons = population(12, seed=0)
    model = HalfSureModel(len(bios_tokenizer))
    out = measure_bits(model, bios_tokenizer, persons, eval_bios=1, seed=5)
    rng = random.Random("bios-eval/5/0")
    plans = bits.score_plan(bios_tokenizer, [people.bios_biography(p, rng) for p in persons])
    n_name = sum(r == "name" for p in plans for r in p.roles)
    n_value = sum(r not in (None, "name") for p in plans for r in p.roles)
    log2_n0, log2_s0 = math.log2(people.BIOS_POOLS.name_space()), sum(people.BIOS_POOLS.attribute_bits().values())
    assert out["name_bits"] == pytest.approx(12 * log2_n0 - n_name, abs=0.01)
    assert out["value_bits"] == pytest.approx(12 * log2_s0 - n_value, abs=0.01)
    assert out["max_bits"] == pytest.approx(12 * (log2_n0 - math.log2(12) + log2_s0))


def test_exposure_stream_shows_each_person_once_per_exposure_with_the_junk_share(bios_tokenizer):
    persons = population(10, seed=0)
    stream, counts = exposure_stream(persons, exposures=4, junk_fraction=0.75, tokenizer=bios_tokenizer, seed=0)
    assert counts["bio_tokens"] + counts["junk_tokens"] == len(stream)
    assert 0.74 < counts["junk_tokens"] / len(stream) < 0.80  # whole paragraphs: at most one over per exposure
    docs = bios_tokenizer.decode(stream.tolist()).split(bios_tokenizer.eos_token)[:-1]
    bios = [d for d in docs if any(d.startswith(p.name + " ") for p in persons)]
    assert len(bios) == 40 and len(set(bios)) == 40  # 4 exposures x 10 people, every biography re-drawn
    for p in persons:
        assert sum(d.startswith(p.name + " ") for d in bios) == 4
    _no_junk, counts0 = exposure_stream(persons, exposures=2, junk_fraction=0.0, tokenizer=bios_tokenizer, seed=0)
    assert counts0["junk_tokens"] == 0 and counts0["documents"] == 20


def test_tiny_capacity_grid_end_to_end(tmp_path):
    from mixtune.analysis.capacity import run_capacity
    from mixtune.config import load_recipe
    from mixtune.results import ResultsDB

    recipe = load_recipe("recipes/analysis/capacity-tiny.yaml", [f"out_dir={tmp_path / 'cap'}"])
    summary = run_capacity(recipe, log=lambda _: None)
    cells = {c["cell"]: c for c in summary["cells"]}
    assert set(cells) == {"xs-n8-e3-j0", "xs-n8-e3-j0.5"}
    for c in cells.values():
        assert c["bits_per_param"] == pytest.approx(c["bits"] / c["params_counted"])
        assert c["memorised_fraction"] == pytest.approx(c["bits"] / c["max_bits"])
        assert c["params_non_embedding"] < c["params_counted"] < c["params_total"]  # only used rows are counted
        assert c["tokens"] <= c["bio_tokens"] + c["junk_tokens"] < c["tokens"] + 64
    assert cells["xs-n8-e3-j0"]["junk_tokens"] == 0
    junk = cells["xs-n8-e3-j0.5"]
    assert 0.45 < junk["junk_tokens"] / (junk["junk_tokens"] + junk["bio_tokens"]) < 0.6
    out = tmp_path / "cap"
    assert (out / "report" / "capacity.png").stat().st_size > 1000
    page = (out / "report" / "index.html").read_text()
    assert "data:image/png;base64," in page and "xs-n8-e3-j0.5" in page
    with ResultsDB(out / "results.sqlite") as db:
        runs = {r["run_id"]: r for r in db.runs("capacity")}
        assert set(runs) == {"capacity/xs-n8-e3-j0", "capacity/xs-n8-e3-j0.5"}
        rows = {m["name"]: m["value"] for m in db.metrics("capacity/xs-n8-e3-j0") if m["stage"] == "capacity"}
        assert rows["bits"] == pytest.approx(cells["xs-n8-e3-j0"]["bits"])
        assert rows["bits/gender"] + rows["bits/birth_date"] + rows["bits/birth_city"] + rows["bits/university"] \
            + rows["bits/major"] + rows["bits/employer"] + rows["bits/work_city"] == pytest.approx(rows["value_bits"])
        assert db.metrics("capacity/xs-n8-e3-j0", "train_loss")
    before = (out / "cells" / "xs-n8-e3-j0" / "result.json").stat().st_mtime
    run_capacity(recipe, log=lambda _: None)  # finished cells are not redone
    assert (out / "cells" / "xs-n8-e3-j0" / "result.json").stat().st_mtime == before
    with ResultsDB(out / "results.sqlite") as db:  # re-recording replaces the rows, never duplicates them
        assert len(db.metrics("capacity/xs-n8-e3-j0", "bits")) == 1
