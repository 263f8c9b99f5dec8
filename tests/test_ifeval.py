"""IFEval: every instruction checker on hand-written passing/failing responses, strict vs loose, the 541 real
prompts, seeded language detection, and hand-computed summary numbers. Offline."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA, needs_data

from mixtune.evaluate.ifeval import INSTRUCTIONS, IFEval, MiniLabInstruct, check_instruction, get_checker
from mixtune.evaluate.ifeval.text import count_sentences, count_words, detect_language, split_sentences, word_tokens

DATA_DIR = SHARED_DATA
IFEVAL_FILE = DATA_DIR / "ifeval" / "input_data.jsonl"

FRENCH = "Bonjour, je m'appelle Marie et j'habite à Paris depuis dix ans avec ma famille."
ENGLISH = "The quick brown fox jumps over the lazy dog while the farmer watches from the barn."

# (instruction id, kwargs, a response that follows it, a response that does not)
CASES = [
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 3, "capital_relation": "at least"},
        "The NASA team said DON'T panic.",
        "The Nasa team said relax.",
    ),  # DO + N'T + NASA = 3 capital tokens
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "less than"},
        "Only ONE shout here.",
        "TWO LOUD words.",
    ),
    ("change_case:english_capital", {}, ENGLISH.upper(), ENGLISH),
    ("change_case:english_lowercase", {}, ENGLISH.lower(), ENGLISH),
    (
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Write a poem about cats."},
        "write a poem about cats.\nCats sleep all day.",
        "Here is a poem about cats.",
    ),
    ("combination:two_responses", {}, "Answer one.\n******\nAnswer two.", "Same.\n******\nSame."),
    (
        "detectable_content:number_placeholders",
        {"num_placeholders": 2},
        "Dear [name], you live at [address].",
        "Dear [name], hello.",
    ),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\n\nP.S. see you soon", "Hi. PS see you"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\np. p. s. one more", "Hi.\nP.S. only"),
    ("detectable_format:constrained_response", {}, "My answer is maybe.", "My answer is perhaps."),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{'a': 1}"),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "SECTION", "num_sections": 2},
        "SECTION 1\nintro\nSECTION 2\nbody",
        "SECTION 1\nonly one section",
    ),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n- two", "* one\n* two\n* three"),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "*first* and **second**",
        "*first* and ** ** and **",
    ),
    ("detectable_format:title", {}, "<<My Title>>\nText.", "<< >>\nNo title."),
    ("keywords:existence", {"keywords": ["Apple", "pie"]}, "I baked an apple PIE.", "I baked an apple tart."),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "My catalog is long.", "The Cat sat."),
    (
        "keywords:frequency",
        {"keyword": "data", "frequency": 2, "relation": "at least"},
        "Data beats opinions; database design needs data.",
        "Data beats opinions.",
    ),
    (
        "keywords:frequency",
        {"keyword": "data", "frequency": 2, "relation": "less than"},
        "One data point.",
        "data and data",
    ),
    (
        "keywords:letter_frequency",
        {"letter": "q", "let_frequency": 2, "let_relation": "at least"},
        "Quiet queen.",
        "Quiet king.",
    ),
    (
        "keywords:letter_frequency",
        {"letter": "z", "let_frequency": 1, "let_relation": "less than"},
        "No such letter.",
        "Zebra.",
    ),
    ("language:response_language", {"language": "fr"}, FRENCH, ENGLISH),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Then"},
        'First part.\n\n"Then, the end.',
        "First part.\n\nAfter that, the end.",
    ),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 2},
        "Para one.\n***\nPara two.",
        "Para one.\n***\n\n***\nPara two.",
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "less than"},
        "Dr. Smith arrived. He left.",
        "One. Two. Three.",
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "at least"},
        "Wow! Is it? Yes.",
        "Mr. Smith met Ms. Jones.",
    ),
    (
        "length_constraints:number_words",
        {"num_words": 5, "relation": "at least"},
        "one two three four five",
        "one two-three four",
    ),
    ("punctuation:no_comma", {}, "No commas here.", "Well, here is one."),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        'Done. "Any other questions?"',
        "Any other questions? Bye.",
    ),
    ("startend:quotation", {}, '  "Wrapped."  ', 'Wrapped."'),
]


def test_every_instruction_type_has_cases():
    assert {case[0] for case in CASES} == set(INSTRUCTIONS)
    assert len(INSTRUCTIONS) == 25


@pytest.mark.parametrize(("instruction_id", "kwargs", "good", "bad"), CASES, ids=[c[0] for c in CASES])
def test_checker_pass_and_fail(instruction_id, kwargs, good, bad):
    assert check_instruction(instruction_id, good, kwargs) is True
    assert check_instruction(instruction_id, bad, kwargs) is False


def test_unknown_instruction_lists_valid_ids():
    with pytest.raises(KeyError, match="punctuation:no_comma"):
        get_checker("punctuation:no_semicolon")


def test_none_kwargs_are_dropped_and_blank_response_fails():
    kwargs = {"num_placeholders": 1, "language": None, "relation": None}
    assert check_instruction("detectable_content:number_placeholders", "[x]", kwargs)
    assert not check_instruction("punctuation:no_comma", "   \n", {})  # blank follows nothing (reference)


def test_loose_accepts_what_strict_rejects():
    task = IFEval(path="unused")
    example = {"instruction_id_list": ["startend:quotation", "detectable_format:title"], "kwargs": [{}, {}]}
    # A chatty first line breaks the quotation wrap; loose mode drops the first line.
    score = task.score(example, 'Sure, here it is:\n"<<Ode>> roses are red."')
    assert score["strict_instructions"] == [False, True]
    assert score["loose_instructions"] == [True, True]
    assert score["passed"] is False
    assert score["result"] == "failed: startend:quotation"
    # Removing every "*" is a loose variant too: a bold closing phrase ends with "**" strictly.
    assert task.score(
        {"instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": "Bye."}]}, "Hello.\nBye.**"
    )["loose_instructions"] == [True]


def test_word_and_sentence_counts():
    assert count_words("Hello, world! It's 3-way.") == 6  # \w+ runs: Hello world It s 3 way
    assert count_sentences("") == 0
    assert count_sentences("No end mark\n\nstill one sentence") == 1  # newlines alone never split (Punkt)
    assert split_sentences("He went to the U.S. The trip was fun. Then e.g. this.") == [
        "He went to the U.S.",
        "The trip was fun.",
        "Then e.g. this.",
    ]
    assert count_sentences('Really?! Yes... no. "Quoted." Next') == 4
    assert count_sentences("1. First item\n2. Second item") == 3  # Punkt ends a sentence after "1." too


def test_word_tokens_split_contractions_not_hyphens():
    assert word_tokens("DON'T stop, WELL-KNOWN (NASA) cannot") == [
        "DO",
        "N'T",
        "stop",
        "WELL-KNOWN",
        "NASA",
        "can",
        "not",
    ]


def test_language_detection_is_deterministic():
    text = "Ciao, come stai? Oggi andiamo al mare con gli amici."
    assert {detect_language(text) for _ in range(5)} == {"it"}
    assert detect_language(FRENCH) == "fr"
    assert detect_language("12345 !!!") is None  # no letters: the reference counts this as followed
    assert check_instruction("language:response_language", "12345 !!!", {"language": "fr"})


def test_summary_hand_computed():
    task = IFEval(path="unused")
    scored = [
        {"strict_instructions": [True, True], "loose_instructions": [True, True]},
        {"strict_instructions": [True, False, False], "loose_instructions": [True, True, False]},
        {"strict_instructions": [False], "loose_instructions": [True]},
    ]
    summary = task.summarize(scored)
    assert summary["n"] == 3
    assert summary["prompt_level_strict"] == pytest.approx(1 / 3)  # only the first prompt
    assert summary["instruction_level_strict"] == pytest.approx(3 / 6)
    assert summary["prompt_level_loose"] == pytest.approx(2 / 3)
    assert summary["instruction_level_loose"] == pytest.approx(5 / 6)


@needs_data
def test_real_prompts_load_and_ids_are_covered():
    task = IFEval(data_dir=str(DATA_DIR))
    examples = task.examples()
    assert len(examples) == 541
    ids = {i for ex in examples for i in ex["instruction_id_list"]}
    assert ids == set(INSTRUCTIONS)
    first = task.example("ifeval/1000")
    assert first["messages"] == [{"role": "user", "content": first["prompt"]}]
    assert first["instruction_id_list"] == [
        "punctuation:no_comma",
        "detectable_format:number_highlighted_sections",
        "length_constraints:number_words",
    ]


@needs_data
def test_known_good_responses_on_real_prompts():
    """Cross-check: responses written to satisfy real prompts' instructions pass; the empty response fails all."""
    task = IFEval(data_dir=str(DATA_DIR))
    ex = task.example("ifeval/1000")  # no commas, >= 3 highlights, >= 300 words
    body = " ".join(["Raymond ruled Tripoli for many years and fought in wars."] * 30)
    good = f"*Early life* *Reign* *Death*\n\n{body}"
    scored = task.score_all([ex, ex], [good, ""])
    assert scored[0]["passed"] and scored[0]["strict_instructions"] == [True, True, True]
    assert scored[1]["strict_instructions"] == [False, False, False]
    repeat = next(e for e in task.examples() if "combination:repeat_prompt" in e["instruction_id_list"])
    kw = repeat["kwargs"][repeat["instruction_id_list"].index("combination:repeat_prompt")]
    assert check_instruction("combination:repeat_prompt", kw["prompt_to_repeat"] + "\nMy answer.", kw)


def test_minilab_instruct_reads_world_bench(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    records = [
        {
            "task_id": "instruct/0",
            "key": 0,
            "prompt": "Say hi without commas.",
            "instruction_id_list": ["punctuation:no_comma"],
            "kwargs": [{}],
        },
        {
            "task_id": "instruct/1",
            "key": 1,
            "prompt": "Say hi in lower case.",
            "instruction_id_list": ["change_case:english_lowercase", "keywords:existence"],
            "kwargs": [{}, {"keywords": ["hi"]}],
        },
    ]
    (bench / "instruct_test.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    task = MiniLabInstruct(world_dir=str(tmp_path))
    assert task.name == "minilab_instruct" and task.ability == "general"
    examples = task.examples()
    assert [e["task_id"] for e in examples] == ["instruct/0", "instruct/1"]
    scored = task.score_all(examples, ["hi there friend", "Hi there my good friend, how are you today?"])
    assert [s["passed"] for s in scored] == [True, False]
    assert task.summarize(scored)["instruction_level_strict"] == pytest.approx(2 / 3)


def test_unknown_id_in_bench_file_fails_at_load(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"key": 1, "prompt": "p", "instruction_id_list": ["nope:x"], "kwargs": [{}]}) + "\n")
    with pytest.raises(KeyError, match="valid"):
        IFEval(path=str(path)).examples()


# Real GPT-4 responses with the reference's own verdicts (google-research IFEval,
# data/input_response_data_gpt4_20231107_145030.jsonl scored by evaluation_main; eval_results_strict.jsonl as
# published in grimmmyshini/Evaluating-Instruction-Following-LLMs). Keyed by the start of the prompt.
REFERENCE_VERDICTS = [
    ('Given the sentence "Two young boys with toy guns and horns."', "what are the two young boys holding?", [True]),
    ("What is a name that people call God?", "Jehovah ****** Allah", [True]),
    (
        "Write two jokes about rockets.",
        (
            "Why don't rockets ever get lost? Because they always follow the stars! ****** Why did the rocket break "
            "up with the satellite? It needed more space!"
        ),
        [True, True],
    ),
    (
        "Write a letter to a friend in all lowercase letters",
        # shortened; the capitals in the placeholder are what fail it in the reference
        (
            "hey there,\n\nso, i'm writing to ask if you could take some time out of your day to go and vote."
            "\n\nbest,\n[Your Name]"
        ),
        [False],
    ),
]


@needs_data
@pytest.mark.parametrize(("prompt_start", "response", "expected"), REFERENCE_VERDICTS)
def test_reference_verdicts_on_real_responses(prompt_start, response, expected):
    task = IFEval(data_dir=str(DATA_DIR))
    example = next(e for e in task.examples() if e["prompt"].startswith(prompt_start))
    assert task.score(example, response)["strict_instructions"] == expected
