"""Chat templates and response-only labels on a tiny byte-level BPE tokenizer trained here (offline)."""

from __future__ import annotations

import random

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mixtune.data.templates import (
    IGNORE_INDEX,
    VICUNA_SYSTEM,
    render_prompt,
    segment_conversation,
    stop_strings,
    tokenize_example,
)

# The mini-lab tokenizer's shape (docs/CONTRACTS.md): ChatML with {% generation %} around assistant content.
GEN_CHATML = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CODE_PROMPT = 'def add_two(x: int) -> int:\n    """Return x plus two."""\n'
CODE_BODY = "    y = x + 2\n    return y\n"


def training_texts(n: int = 400, seed: int = 0) -> list[str]:
    """A few hundred seeded strings shaped like the SFT data (arithmetic, code, chat)."""
    rng = random.Random(seed)
    names = ["Ann", "Bob", "Cleo", "Dan", "Eve"]
    items = ["apples", "pens", "books", "coins"]
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        name, item = rng.choice(names), rng.choice(items)
        out.append(f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have?")
        out.append(f"{name} has {a} + {b} = {a + b} {item}.\n#### {a + b}")
        out.append(f"def f_{item}(x):\n    y = x + {a}\n    return y * {b}\n")
        out.append(f"Who are you? I am a helpful assistant. Have a nice day, {name}!")
    return out + [CODE_PROMPT + CODE_BODY, VICUNA_SYSTEM, "USER: ASSISTANT:"]


def build_tiny_tokenizer(chat_template: str | None = GEN_CHATML) -> PreTrainedTokenizerFast:
    """Byte-level BPE (digits split) with the mini-lab special tokens, trained in well under a second."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d"), "isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, min_frequency=2, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"],
                                  show_progress=False)
    tok.train_from_iterator(training_texts(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"],
                                   chat_template=chat_template)


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


CHAT = [
    {"role": "user", "content": "Ann has 12 apples and buys 30 more. How many apples does Ann have?"},
    {"role": "assistant", "content": "Ann has 12 + 30 = 42 apples.\n#### 42"},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "I am a helpful assistant."},
]
CODE = {"id": "c/0", "messages": [{"role": "user", "content": CODE_PROMPT}, {"role": "assistant", "content": CODE_BODY}]}


def trained_spans(tokenizer, out: dict) -> list[str]:
    """Decoded runs of consecutive trained tokens."""
    spans, cur = [], []
    for tid, lab in zip(out["input_ids"], out["labels"]):
        if lab != IGNORE_INDEX:
            assert lab == tid
            cur.append(tid)
        elif cur:
            spans.append(tokenizer.decode(cur)), cur.clear()
    if cur:
        spans.append(tokenizer.decode(cur))
    return spans


@pytest.mark.parametrize("template", ["chatml", "tokenizer"])
def test_chatml_concatenation_equals_full_text_tokenization(tok, template):
    out = tokenize_example({"messages": CHAT}, tok, template, max_seq_len=512)
    full = "".join(text for text, _ in segment_conversation(CHAT, tok, template))
    assert full.startswith("<|im_start|>user\nAnn has 12") and full.endswith("assistant.<|im_end|>\n")
    assert out["input_ids"] == tok(full, add_special_tokens=False)["input_ids"]
    assert not out["truncated"] and out["n_tokens"] == len(out["input_ids"])


def test_only_assistant_answers_and_end_of_turn_are_trained(tok):
    out = tokenize_example({"messages": CHAT}, tok, "chatml", max_seq_len=512)
    assert trained_spans(tok, out) == [CHAT[1]["content"] + "<|im_end|>", CHAT[3]["content"] + "<|im_end|>"]
    prompt_len = len(tok(render_prompt(CHAT[:1], tok, "chatml"), add_special_tokens=False)["input_ids"])
    assert set(out["labels"][:prompt_len]) == {IGNORE_INDEX}
    assert out["labels"][prompt_len] != IGNORE_INDEX
    assert out["n_target_tokens"] == sum(lab != IGNORE_INDEX for lab in out["labels"])


def test_labels_match_the_generation_marker_mask_of_transformers(tok):
    """Our prefix-rendering labels agree with apply_chat_template(return_assistant_tokens_mask=True)."""
    ours = tokenize_example({"messages": CHAT}, tok, "tokenizer", max_seq_len=512)
    ref = tok.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert ours["input_ids"] == ref["input_ids"]
    assert [int(lab != IGNORE_INDEX) for lab in ours["labels"]] == ref["assistant_masks"]


def test_code_body_is_encoded_as_one_unit_after_the_generation_prompt(tok):
    """Training ids = generation prompt ids + answer ids, even where full-text BPE would merge '\\n' + indent."""
    out = tokenize_example(CODE, tok, "chatml", max_seq_len=512)
    prompt_ids = tok(render_prompt(CODE["messages"], tok, "chatml"), add_special_tokens=False)["input_ids"]
    body_ids = tok(CODE_BODY + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert out["input_ids"][:len(prompt_ids)] == prompt_ids
    assert out["input_ids"][len(prompt_ids):len(prompt_ids) + len(body_ids)] == body_ids
    assert out["labels"][len(prompt_ids):len(prompt_ids) + len(body_ids)] == body_ids
    # Byte-level pre-tokenization of the whole text would split "\n    y" as "\n   " + " y": not what generation sees.
    full_text = render_prompt(CODE["messages"], tok, "chatml") + CODE_BODY + "<|im_end|>\n"
    assert out["input_ids"] != tok(full_text, add_special_tokens=False)["input_ids"]


def test_vicuna_template_and_stop_strings(tok):
    text = "".join(t for t, _ in segment_conversation(CHAT, tok, "vicuna"))
    assert text == (f"{VICUNA_SYSTEM} USER: {CHAT[0]['content']} ASSISTANT: {CHAT[1]['content']}<|endoftext|>"
                    f"USER: {CHAT[2]['content']} ASSISTANT: {CHAT[3]['content']}<|endoftext|>")
    assert render_prompt(CHAT[:3], tok, "vicuna").endswith(f"USER: {CHAT[2]['content']} ASSISTANT:")
    out = tokenize_example({"messages": CHAT}, tok, "vicuna", max_seq_len=512)
    assert trained_spans(tok, out) == [" " + CHAT[1]["content"] + "<|endoftext|>",
                                       " " + CHAT[3]["content"] + "<|endoftext|>"]
    custom = render_prompt(CHAT[:1], tok, "vicuna", system_prompt="Be brief.")
    assert custom.startswith("Be brief. USER: Ann")
    assert stop_strings("vicuna", tok) == ["<|endoftext|>", "USER:"]
    assert stop_strings("chatml", tok) == ["<|im_end|>", "<|endoftext|>"]
    assert stop_strings("tokenizer", tok) == ["<|im_end|>", "<|endoftext|>"]


def test_system_prompt_is_added_only_when_missing(tok):
    added = render_prompt(CHAT[:1], tok, "chatml", system_prompt="S1")
    assert added.startswith("<|im_start|>system\nS1<|im_end|>\n<|im_start|>user\n")
    own = [{"role": "system", "content": "S0"}, *CHAT[:1]]
    assert render_prompt(own, tok, "chatml", system_prompt="S1").startswith("<|im_start|>system\nS0<|im_end|>")


def test_truncation_is_flagged_and_counted(tok):
    full = tokenize_example({"messages": CHAT}, tok, "chatml", max_seq_len=512)
    cut = tokenize_example({"messages": CHAT}, tok, "chatml", max_seq_len=20)
    assert cut["truncated"] and cut["n_tokens"] == full["n_tokens"] > 20
    assert cut["input_ids"] == full["input_ids"][:20] and len(cut["labels"]) == 20


def test_text_example_is_fully_trained_with_eos(tok):
    out = tokenize_example({"text": "Bob has 7 pens."}, tok, "chatml", max_seq_len=64)
    assert out["labels"] == out["input_ids"] and out["input_ids"][-1] == tok.eos_token_id


def test_unknown_template_and_missing_chat_template_fail_clearly(tok):
    with pytest.raises(ValueError, match="unknown chat template 'alpaca'; valid: auto, tokenizer, chatml, .*vicuna"):
        render_prompt(CHAT[:1], tok, "alpaca")
    bare = build_tiny_tokenizer(chat_template=None)
    with pytest.raises(ValueError, match="no chat_template"):
        tokenize_example({"messages": CHAT}, bare, "tokenizer", max_seq_len=64)
    assert tokenize_example({"messages": CHAT}, bare, "chatml", max_seq_len=512)["n_target_tokens"] > 0
