"""The mini-lab world: determinism, file contracts, correctness of every ability's data, train/test disjointness."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from mixtune.config import WorldConfig, load_recipe
from mixtune.world import arithmetic, codetasks, ifcheck, instruct, people
from mixtune.world.build import generate_world
from mixtune.world.cli import main as world_main

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "world-mini.yaml"
SMALL = {"n_people": 40, "bio_exposures": 3, "math_train": 400, "math_test": 80, "code_train": 300, "code_test": 60,
         "instruct_train": 400, "instruct_test": 100, "knowledge_test": 50, "pretrain_math": 300,
         "pretrain_code": 150, "pretrain_text": 150, "preference_math": 80, "preference_code": 60,
         "preference_instruct": 80}
PREFERENCE = ("preference_math", "preference_code", "preference_instruct")
# IFEval kwargs names per instruction id (google-research instruction_following_eval/instructions.py).
IFEVAL_KWARGS = {
    "change_case:english_lowercase": set(), "change_case:english_capital": set(), "punctuation:no_comma": set(),
    "startend:quotation": set(), "detectable_format:title": set(), "startend:end_checker": {"end_phrase"},
    "keywords:existence": {"keywords"}, "keywords:frequency": {"keyword", "frequency", "relation"},
    "length_constraints:number_words": {"relation", "num_words"},
    "length_constraints:number_sentences": {"relation", "num_sentences"},
    "detectable_content:postscript": {"postscript_marker"}, "detectable_format:number_bullet_lists": {"num_bullets"},
}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(seed=7, **SMALL), out, progress=False)
    return out


def test_same_seed_gives_byte_identical_files(world, tmp_path):
    generate_world(WorldConfig(seed=7, **SMALL), tmp_path, progress=False)
    files = sorted(p.relative_to(world) for p in world.rglob("*") if p.is_file())
    assert [str(f) for f in files] == sorted(
        ["world.json", "corpus/pretrain.jsonl", "sft/math.jsonl", "sft/code.jsonl", "sft/general.jsonl",
         "sft/knowledge.jsonl", "bench/math_test.jsonl", "bench/code_test.jsonl", "bench/instruct_test.jsonl",
         "bench/knowledge_test.jsonl", *(f"sft/{name}.jsonl" for name in PREFERENCE)])
    for f in files:
        assert (world / f).read_bytes() == (tmp_path / f).read_bytes(), f
    other = tmp_path / "other"
    generate_world(WorldConfig(seed=8, **SMALL), other, progress=False)
    assert (other / "sft/math.jsonl").read_bytes() != (world / "sft/math.jsonl").read_bytes()


def test_sft_records_follow_the_data_contract(world):
    info = json.loads((world / "world.json").read_text())
    for ability in ("math", "code", "general", "knowledge"):
        rows = read_jsonl(world / "sft" / f"{ability}.jsonl")
        assert len(rows) == info["counts"][f"sft/{ability}"] > 0
        assert [r["id"] for r in rows] == [f"minilab/{ability}/train/{i}" for i in range(len(rows))]
        for r in rows:
            assert r["ability"] == ability and r["source"] == f"minilab/{ability}"
            assert r["task_type"] == (1 if ability == "knowledge" else 0)
            assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
            assert all(isinstance(m["content"], str) and m["content"] for m in r["messages"])
    assert len(read_jsonl(world / "corpus/pretrain.jsonl")) == info["counts"]["corpus/documents"]
    for name, prefix in [("math_test", "minilab_math"), ("code_test", "minilab_code"),
                         ("instruct_test", "minilab_instruct"), ("knowledge_test", "minilab_knowledge")]:
        rows = read_jsonl(world / "bench" / f"{name}.jsonl")
        assert [r["task_id"] for r in rows] == [f"{prefix}/{i}" for i in range(len(rows))]


def _equations(solution: str) -> list[tuple[int, str, int, int]]:
    lines = solution.split("\n")
    eqs = [re.fullmatch(r"(\d+) ([-+*/]) (\d+) = (-?\d+)", line) for line in lines[:-1]]
    assert all(eqs), solution
    return [(int(m[1]), m[2], int(m[3]), int(m[4])) for m in eqs]


def test_math_answers_are_correct_and_held_out_problems_are_new(world):
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
    train = read_jsonl(world / "sft/math.jsonl")
    bench = read_jsonl(world / "bench/math_test.jsonl")
    signatures = {"train": set(), "bench": set()}
    for split, solution, question in ([("train", r["messages"][1]["content"], r["messages"][0]["content"])
                                       for r in train] + [("bench", r["answer"], r["question"]) for r in bench]):
        eqs = _equations(solution)
        assert 1 <= len(eqs) <= 3
        for i, (a, op, b, result) in enumerate(eqs):
            assert ops[op](a, b) == result >= 0, solution
            if i:
                assert a == eqs[i - 1][3], "each step continues from the previous result"
        final = solution.split("\n")[-1]
        assert final == f"#### {eqs[-1][3]}"
        assert str(eqs[0][0]) in question and question.endswith("?")
        signatures[split].add(tuple((a, op, b) for a, op, b, _ in eqs))
    for r in train:
        assert r["messages"][1]["content"].endswith(f"#### {r['answer']}")
    assert len(signatures["bench"]) == len(bench), "held-out problems are distinct"
    assert not signatures["train"] & signatures["bench"]


def test_canonical_code_passes_its_tests_and_an_empty_body_fails(world):
    bench = read_jsonl(world / "bench/code_test.jsonl")
    train = read_jsonl(world / "sft/code.jsonl")
    tasks = [(r["prompt"], r["canonical_solution"], r["test"], r["entry_point"]) for r in bench]
    tasks += [(r["messages"][0]["content"], r["messages"][1]["content"], r["tests"], r["entry_point"]) for r in train]
    for prompt, body, test, entry in tasks:
        assert prompt.startswith(f"def {entry}(") and test.startswith("def check(candidate):\n    assert")
        assert 2 <= len(body.splitlines()) <= 4 and body.startswith("    ")
        assert codetasks.passes(prompt + body, test, entry), prompt
        assert not codetasks.passes(prompt + "    pass\n", test, entry)
    # a composition with one parameter changed fails the tests (the tests pin the parameters down)
    prompt, body, test, entry = next(t for t in tasks if "nums = [x for x in nums if x > " in t[1])
    k = int(re.search(r"x > (\d+)", body)[1])
    wrong = body.replace(f"x > {k}", f"x > {k + 100}")
    assert not codetasks.passes(prompt + wrong, test, entry)
    # disjoint (composition, parameters): the prompt spells out both
    assert not {t[0] for t in tasks[:len(bench)]} & {t[0] for t in tasks[len(bench):]}
    assert len({t[0] for t in tasks[:len(bench)]}) == len(bench)


def test_code_tasks_compose_primitives_and_pretraining_sees_single_ones(world):
    rng = random.Random(0)
    tasks = codetasks.make_tasks(200, rng)
    assert all(2 <= len(t.key) <= 3 for t in tasks)
    held_out = {t.key for t in tasks[:50]}
    assert not held_out & {t.key for t in codetasks.make_tasks(300, random.Random(1), held_out)}
    corpus = (world / "corpus/pretrain.jsonl").read_text()
    for r in read_jsonl(world / "bench/code_test.jsonl"):
        assert r["entry_point"] + "(" not in corpus
    snippets = [json.loads(line)["text"] for line in corpus.splitlines() if '"def ' in line[:20]]
    assert snippets and all(s.count("    return ") == 1 and "\n    nums = " not in s for s in snippets)


def test_instruction_responses_follow_their_instructions(world):
    rows = read_jsonl(world / "sft/general.jsonl")
    used = set()
    for r in rows:
        ids, kwargs = r["instruction_ids"], r["kwargs"]
        assert 1 <= len(ids) <= 2 and len(kwargs) == len(ids)
        for i, kw in zip(ids, kwargs):
            assert set(kw) == IFEVAL_KWARGS[i], (i, kw)
        assert all(ifcheck.follows(r["messages"][1]["content"], ids, kwargs)), r
        used.update(ids)
    assert len(used) >= 10
    # a response that ignores the instruction is caught by the self-check
    assert ifcheck.follows("Hello, world.", ["punctuation:no_comma", "startend:quotation"], [{}, {}]) == [False, False]


def test_instruction_responses_pass_the_ifeval_scorer(world):
    registry = pytest.importorskip("mixtune.evaluate.ifeval.registry")
    for r in read_jsonl(world / "sft/general.jsonl"):
        verdicts = registry.follow_strict(r["messages"][1]["content"], r["instruction_ids"], r["kwargs"])
        assert all(verdicts), (r["instruction_ids"], r["messages"][1]["content"])


def test_case_instruction_responses_are_detected_as_english(world):
    rows = [r for r in read_jsonl(world / "sft/general.jsonl") if any(i.startswith("change_case") for i in
                                                                      r["instruction_ids"])]
    assert rows
    for r in rows:
        assert ifcheck.is_english(r["messages"][1]["content"])
    assert not ifcheck.is_english("DER SOMMER IST SEHR SONNIG UND WARM IN DER WOCHE.")


def test_instruction_benchmark_is_ifeval_format_and_disjoint(world):
    bench = read_jsonl(world / "bench/instruct_test.jsonl")
    train = read_jsonl(world / "sft/general.jsonl")

    def key(prompt: str, ids: list[str]) -> tuple:
        base = prompt.split(". ")[0] + "."
        assert any(base == b.format(t=t[0]) for b in instruct.BASE_REQUESTS for t in instruct.pools.TOPICS)
        return base, tuple(sorted(ids))

    for i, r in enumerate(bench):
        assert set(r) == {"task_id", "key", "prompt", "instruction_id_list", "kwargs"} and r["key"] == i
        for iid, kw in zip(r["instruction_id_list"], r["kwargs"]):
            assert set(kw) == IFEVAL_KWARGS[iid]
    bench_keys = {key(r["prompt"], r["instruction_id_list"]) for r in bench}
    assert len(bench_keys) == len(bench)
    assert not bench_keys & {key(r["messages"][0]["content"], r["instruction_ids"]) for r in train}


def test_knowledge_answers_match_people_and_people_are_disjoint(world):
    info = json.loads((world / "world.json").read_text())
    by_name = {p["name"]: p for p in info["people"]}
    assert len(by_name) == len(info["people"]) == SMALL["n_people"]
    questions = {k: re.compile("^" + re.escape(q).replace(re.escape("{name}"), "(.+)") + "$")
                 for k, q in people.QUESTIONS.items()}

    def asked(question: str) -> tuple[dict, str]:
        for attr, pattern in questions.items():
            if m := pattern.match(question):
                return by_name[m[1]], attr
        raise AssertionError(question)

    train_names, bench_names = set(), set()
    for r in read_jsonl(world / "sft/knowledge.jsonl"):
        person, attr = asked(r["messages"][0]["content"])
        assert r["messages"][1]["content"] == r["answer"] == person[attr]
        assert person["split"] == "train"
        train_names.add(person["name"])
    for r in read_jsonl(world / "bench/knowledge_test.jsonl"):
        person, attr = asked(r["question"])
        assert r["answer"] == [person[attr]] and person["split"] == "held_out"
        bench_names.add(person["name"])
    assert train_names and bench_names and not train_names & bench_names
    # every person, held-out ones included, has biographies in the corpus (knowledge extraction, Physics of LMs 3.1)
    corpus = (world / "corpus/pretrain.jsonl").read_text()
    for p in info["people"]:
        assert corpus.count(p["name"] + " ") >= SMALL["bio_exposures"]
        assert f"{p['name']} works for {p['employer']}." in corpus or p["employer"] in corpus


def test_biographies_redraw_templates_and_order():
    person = people.make_people(10, seed=3)[0]
    rng = random.Random(0)
    bios = [people.biography(person, rng) for _ in range(20)]
    assert len(set(bios)) == 20
    for bio in bios:
        for attr in people.ATTRIBUTES:
            assert person.attribute(attr) in bio
    names = [p.name for p in people.make_people(2000, seed=3)]
    assert len(set(names)) == 2000


def test_math_problem_exclusion():
    held = arithmetic.make_problems(100, random.Random(0))
    train = arithmetic.make_problems(2000, random.Random(1), {p.signature for p in held})
    assert not {p.signature for p in held} & {p.signature for p in train}


def test_cli_writes_the_world_and_prints_a_summary(tmp_path, capsys):
    overrides = [f"world.{k}={v}" for k, v in SMALL.items()] + [f"world.out_dir={tmp_path / 'w'}"]
    assert world_main(["-c", str(RECIPE), *overrides]) == 0
    out = capsys.readouterr().out
    assert "sft/math" in out and "corpus characters" in out
    info = json.loads((tmp_path / "w/world.json").read_text())
    assert info["counts"]["sft/math"] == SMALL["math_train"]
    assert len(read_jsonl(tmp_path / "w/bench/code_test.jsonl")) == SMALL["code_test"]


def test_recipe_loads():
    recipe = load_recipe(RECIPE)
    assert recipe.name == "world-mini" and recipe.world.n_people == 400


# ------------------------------------------------------------------------------------------------ preference pairs
def test_preference_files_leave_the_rest_of_the_world_byte_identical(world, tmp_path):
    generate_world(WorldConfig(seed=7, **{**SMALL, **{name: 0 for name in PREFERENCE}}), tmp_path, progress=False)
    for f in sorted(p.relative_to(world) for p in world.rglob("*") if p.is_file()):
        if f.name != "world.json" and f.stem not in PREFERENCE:
            assert (world / f).read_bytes() == (tmp_path / f).read_bytes(), f
    assert all((tmp_path / "sft" / f"{name}.jsonl").read_text() == "" for name in PREFERENCE)
    info = json.loads((world / "world.json").read_text())
    assert {name: info["counts"][f"sft/{name}"] for name in PREFERENCE} == {name: SMALL[name] for name in PREFERENCE}


def test_preference_pairs_follow_the_pair_contract_and_load_as_minilab_sources(world):
    from mixtune.config import SourceConfig
    from mixtune.data.mixture import load_source

    for name, domain in zip(PREFERENCE, ("math", "code", "general")):
        rows = read_jsonl(world / "sft" / f"{name}.jsonl")
        assert [r["id"] for r in rows] == [f"minilab/{name}/train/{i}" for i in range(len(rows))]
        for r in rows:
            assert r["ability"] == "preference" and r["domain"] == domain and r["weight"] == 1.0
            assert [m["role"] for m in r["messages"]] == ["user"] and r["chosen"] != r["rejected"] and r["flaw"]
        examples = load_source(SourceConfig(name=name, minilab=name), world)
        assert len(examples) == len(rows) and {ex["ability"] for ex in examples} == {"preference"}


def test_math_pairs_chosen_passes_gsm8k_rejected_fails_and_problems_are_held_out(world):
    from mixtune.evaluate.gsm8k import score_gsm8k

    rows = read_jsonl(world / "sft/preference_math.jsonl")
    for r in rows:
        gold = f"#### {r['answer']}"
        assert score_gsm8k(r["chosen"], gold)["strict"] and not score_gsm8k(r["rejected"], gold)["strict"]
        if r["flaw"] == "wrong step":  # one wrong result, carried through: every later step is computed from it
            eqs = _equations(r["rejected"])
            wrong = [i for i, (a, op, b, res) in enumerate(eqs) if {"+": a + b, "-": a - b, "*": a * b,
                                                                     "/": a // b}[op] != res]
            assert len(wrong) == 1 and all(eqs[i][0] == eqs[i - 1][3] for i in range(1, len(eqs)))
    assert {r["flaw"] for r in rows} == {"wrong step", "wrong final answer"}
    bench = {tuple((a, op, b) for a, op, b, _ in _equations(r["answer"]))
             for r in read_jsonl(world / "bench/math_test.jsonl")}
    assert not bench & {tuple((a, op, b) for a, op, b, _ in _equations(r["chosen"])) for r in rows}


def test_code_pairs_pass_and_fail_in_the_sandbox_and_tasks_are_held_out(world):
    from mixtune.evaluate.code import MiniLabCode

    rows = read_jsonl(world / "sft/preference_code.jsonl")
    task = MiniLabCode(world_dir=str(world))
    picked = rows[:24]
    examples = [{"task_id": r["id"], "format": "humaneval", "prompt": r["messages"][0]["content"], "test": r["tests"],
                 "entry_point": r["entry_point"]} for r in picked]
    scored = task.score_all(examples + examples, [r["chosen"] for r in picked] + [r["rejected"] for r in picked])
    assert [s["passed"] for s in scored] == [True] * len(picked) + [False] * len(picked)
    assert all(s["result"] != "timeout" for s in scored)
    bench_prompts = {r["prompt"] for r in read_jsonl(world / "bench/code_test.jsonl")}
    assert not bench_prompts & {r["messages"][0]["content"] for r in rows}


def test_instruction_pairs_follow_and_break_the_ifeval_checkers_and_prompts_are_held_out(world):
    from mixtune.evaluate.ifeval.registry import follow_strict

    rows = read_jsonl(world / "sft/preference_instruct.jsonl")
    for r in rows:
        assert all(follow_strict(r["chosen"], r["instruction_ids"], r["kwargs"]))
        assert not all(follow_strict(r["rejected"], r["instruction_ids"], r["kwargs"])), r["flaw"]
    bench = read_jsonl(world / "bench/instruct_test.jsonl")

    def key(prompt: str, ids: list[str]) -> tuple:
        return prompt.split(". ")[0] + ".", tuple(sorted(ids))

    assert not {key(r["prompt"], r["instruction_id_list"]) for r in bench} & {
        key(r["messages"][0]["content"], r["instruction_ids"]) for r in rows}
