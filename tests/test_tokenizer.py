"""The mini-lab tokenizer: single digits, lossless round trips, AutoTokenizer loading, ChatML with assistant masks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mixtune.config import WorldConfig
from mixtune.data.tokenizer_train import default_files, train_tokenizer
from mixtune.data.tokenizer_train import main as tokenizer_main
from mixtune.world.build import generate_world

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "world-mini.yaml"
SMALL = {"n_people": 30, "bio_exposures": 3, "math_train": 300, "math_test": 20, "code_train": 300, "code_test": 20,
         "instruct_train": 300, "instruct_test": 20, "knowledge_test": 20, "pretrain_math": 300, "pretrain_code": 200,
         "pretrain_text": 200}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(seed=3, **SMALL), out, progress=False)
    return out


@pytest.fixture(scope="module")
def tok_dir(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(default_files(world), vocab_size=600, min_frequency=2, out_dir=out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    return AutoTokenizer.from_pretrained(tok_dir)


def test_autotokenizer_loads_with_special_tokens(tok):
    assert len(tok) == 600
    assert tok.bos_token == tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"])
    assert ids == [0, 1, 2, 3]
    assert tok.encode("<|im_start|>user") [0] == 2  # special tokens are atomic in text
    assert tok.encode("hello") == tok("hello")["input_ids"]  # no bos/eos added implicitly


def test_digits_are_single_tokens(tok):
    text = "17 + 25 = 42. 12345 * 678 = 8369910."
    pieces = [tok.decode([i]) for i in tok.encode(text)]
    assert "".join(pieces) == text
    digits = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digits == [c for c in text if c.isdigit()]
    assert not [t for t in tok.get_vocab() if sum(c.isdigit() for c in t) > 1]


def test_round_trip_on_world_text(tok, world):
    texts = [json.loads(line)["text"] for line in (world / "corpus/pretrain.jsonl").read_text().splitlines()[:300]]
    for name in ("code", "general", "math", "knowledge"):
        for line in (world / "sft" / f"{name}.jsonl").read_text().splitlines()[:50]:
            texts += [m["content"] for m in json.loads(line)["messages"]]
    texts += ["def f(s: str) -> str:\n    \"\"\"Tabs\tand  double  spaces.\"\"\"\n        return s[::-1]\n\n",
              "CAPITALS, commas; <<title>> P.S. * bullet \u00e9t\u00e9 \u2713"]
    assert any("\n    " in t for t in texts)
    for text in texts:
        assert tok.decode(tok.encode(text)) == text


def test_sft_words_do_not_fragment(tok, world):
    # words that only the SFT texts use are single tokens because the tokenizer trains on them too (DESIGN.md)
    corpus_only = train_tokenizer(default_files(world)[:1], vocab_size=600, min_frequency=2)
    for word in (" response", " words", "####"):
        assert len(tok.encode(word)) == 1 < len(corpus_only.encode(word)), word
    for word in (" nums", " return"):
        assert len(tok.encode(word)) == 1, word


def test_chat_template_renders_chatml(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": "2 + 3 = 5\n#### 5"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
                    "<|im_start|>assistant\n2 + 3 = 5\n#### 5<|im_end|>\n")
    prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == text[: text.index("2 + 3 = 5")]
    assert tok.apply_chat_template(msgs[:2], tokenize=False) == prompt[: -len("<|im_start|>assistant\n")]


def _assistant_tokens(tok, msgs):
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    return ids, mask


def test_assistant_mask_covers_exactly_the_assistant_content(tok, world):
    code = json.loads((world / "sft/code.jsonl").read_text().splitlines()[0])
    answer = code["messages"][1]["content"]
    assert answer.startswith("    ")
    ids, mask = _assistant_tokens(tok, code["messages"])
    masked = [i for i, m in zip(ids, mask) if m]
    # the code body's indent is not merged with the template's newline: the turn tokenizes as one unit
    assert masked == tok.encode(answer + "<|im_end|>")
    prompt = tok.apply_chat_template(code["messages"][:1], tokenize=True, add_generation_prompt=True,
                                     return_dict=True)["input_ids"]
    assert ids[: len(prompt)] == prompt and not any(mask[: len(prompt)])
    assert ids[len(prompt):] == masked + tok.encode("\n") and mask[-1] == 0


def test_assistant_mask_with_two_turns(tok):
    msgs = [{"role": "user", "content": "Tell me about the sea."}, {"role": "assistant", "content": "It is blue."},
            {"role": "user", "content": "And 7 + 8?"}, {"role": "assistant", "content": "7 + 8 = 15\n#### 15"}]
    ids, mask = _assistant_tokens(tok, msgs)
    spans, current = [], []
    for i, m in zip(ids, mask):
        if m:
            current.append(i)
        elif current:
            spans.append(current)
            current = []
    assert [tok.decode(s) for s in spans] == ["It is blue.<|im_end|>", "7 + 8 = 15\n#### 15<|im_end|>"]


def test_cli_defaults_to_world_files(world, tmp_path, capsys):
    out = tmp_path / "tok"
    argv = ["-c", str(RECIPE), f"world.out_dir={world}", f"tokenizer.out_dir={out}", "tokenizer.vocab_size=400"]
    assert tokenizer_main(argv) == 0
    assert "vocabulary 400" in capsys.readouterr().out
    assert len(AutoTokenizer.from_pretrained(out)) == 400
    with pytest.raises(FileNotFoundError, match="mixtune world"):
        default_files(tmp_path / "missing")


def test_cli_with_explicit_text_file(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"line {i} about the sea and the river" for i in range(300)))
    argv = ["-c", str(RECIPE), f"tokenizer.files=[{corpus}]", f"tokenizer.out_dir={tmp_path / 'tok'}",
            "tokenizer.vocab_size=300"]
    assert tokenizer_main(argv) == 0
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.decode(tok.encode("line 12 about the sea")) == "line 12 about the sea"
