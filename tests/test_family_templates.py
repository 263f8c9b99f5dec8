"""The per-family chat templates (chatml, qwen2, llama3, mistral, gemma, vicuna): each renders its family's known
prompt string and labels only the assistant answers with their end-of-turn token; `auto` picks the checkpoint's own
template or its family's; the template a run trained with is saved with the model (final/, both exports) and renders
through plain `AutoTokenizer.apply_chat_template`; an eval recipe that names another template warns in one line."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import chat_examples, needs_data
from test_templates import build_tiny_tokenizer, trained_spans

from mixtune.data.templates import (
    VICUNA_SYSTEM,
    TemplateError,
    install_template,
    render_prompt,
    resolve_template,
    tokenize_example,
)

# family -> (bos, eos, the rendering of [system?, user, assistant, user, assistant], trained spans decoded)
CHAT = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}]
SYSTEM = [{"role": "system", "content": "Be brief."}]
FAMILIES = {
    "chatml": (None, "<|endoftext|>",
               "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
               ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
               "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n"
               "6<|im_end|>\n"), ["4<|im_end|>", "6<|im_end|>"]),
    "qwen2": (None, "<|endoftext|>",
              ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
              "<|im_start|>assistant\n"),
              ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
              "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n"
              "6<|im_end|>\n"), ["4<|im_end|>", "6<|im_end|>"]),
    "llama3": ("<|begin_of_text|>", "<|end_of_text|>",
               ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
               ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n6<|eot_id|>"), ["4<|eot_id|>", "6<|eot_id|>"]),
    "mistral": ("<s>", "</s>", "<s>[INST] What is 2+2? [/INST]",
                "<s>[INST] Be brief.\n\nWhat is 2+2? [/INST] 4</s>[INST] And 3+3? [/INST] 6</s>", [" 4</s>", " 6</s>"]),
    "gemma": ("<bos>", "<eos>", "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
              ("<bos><start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n"
              "<start_of_turn>user\nAnd 3+3?<end_of_turn>\n<start_of_turn>model\n6<end_of_turn>\n"),
              ["4<end_of_turn>", "6<end_of_turn>"]),
    "vicuna": ("<s>", "</s>", f"{VICUNA_SYSTEM} USER: What is 2+2? ASSISTANT:",
               "Be brief. USER: What is 2+2? ASSISTANT: 4</s>USER: And 3+3? ASSISTANT: 6</s>", [" 4</s>", " 6</s>"]),
}
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<start_of_turn>", "<end_of_turn>"]


def family_tokenizer(bos: str | None, eos: str, chat_template: str | None = None):
    tok = build_tiny_tokenizer(chat_template=chat_template)
    tok.add_special_tokens({**({"bos_token": bos} if bos else {}), "eos_token": eos,
                            "additional_special_tokens": SPECIALS})
    return tok


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_template_renders_the_known_format_and_labels_only_answers(family):
    bos, eos, prompt, full, spans = FAMILIES[family]
    tok = family_tokenizer(bos, eos)
    assert render_prompt(CHAT[:1], tok, family) == prompt
    name, warnings = install_template(tok, family)  # now the tokenizer's own chat_template, as saved
    assert name == family and warnings == []
    assert tok.apply_chat_template(SYSTEM + CHAT, tokenize=False) == full
    out = tokenize_example({"messages": SYSTEM + CHAT}, tok, family, max_seq_len=512)
    assert trained_spans(tok, out) == spans
    assert tok.decode(out["input_ids"]) == full


def test_auto_picks_the_checkpoints_template_or_its_family():
    with_own = family_tokenizer(None, "<|endoftext|>", chat_template="{{ messages[0]['content'] }}")
    assert resolve_template("auto", with_own, "qwen2") == "tokenizer"
    bare = family_tokenizer("<s>", "</s>")
    assert resolve_template("auto", bare, "qwen2") == "qwen2"
    assert resolve_template("auto", bare, "mistral") == "mistral"
    assert resolve_template("auto", bare, "gemma2") == "gemma"
    assert resolve_template("auto", bare, "llama") == "llama3"  # <|eot_id|> is in this vocabulary
    old_llama = build_tiny_tokenizer(chat_template=None)
    assert resolve_template("auto", old_llama, "llama") == "vicuna"  # LLaMA 1/2: no Llama 3 tokens
    with pytest.raises(TemplateError, match="model_type 'gpt2' has no known family"):
        resolve_template("auto", bare, "gpt2")


def test_an_explicit_template_different_from_the_saved_one_warns():
    tok = family_tokenizer(None, "<|endoftext|>")
    install_template(tok, "vicuna")
    _, warnings = install_template(tok, "chatml")
    assert warnings == [("data.template=chatml differs from the chat template saved with the model (vicuna); "
                        "using chatml as the recipe says")]
    _, warnings = install_template(tok, "tokenizer")
    assert warnings == []
    plain = build_tiny_tokenizer(chat_template=None)
    _, warnings = install_template(plain, "llama3")
    assert warnings == [("data.template=llama3: the vocabulary has no <|start_header_id|>, <|end_header_id|>, "
                        "<|eot_id|>; they are encoded as plain text (use the checkpoint's own family template, or "
                        "data.template=auto)")]


@needs_data
def test_a_vicuna_trained_model_saves_and_exports_the_vicuna_prompt(tmp_path, base_dir, shared_data, capsys):
    from transformers import AutoTokenizer

    from mixtune.cli import main as mixtune_main

    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": e["messages"]}) + "\n" for e in chat_examples(8)))
    tree = {"name": "vic", "out_dir": str(tmp_path / "run"), "model": {"path": str(base_dir)},
            "data": {"sources": [{"name": "toy", "path": str(data)}], "template": "vicuna", "max_seq_len": 256},
            "adapter": {"type": "lora", "r": 4, "alpha": 8},
            "train": {"max_steps": 2, "batch_size": 4, "bf16": False},
            "eval": {"benchmarks": ["gsm8k"], "limit": 1, "max_new_tokens": 2, "data_dir": str(shared_data)}}
    recipe = tmp_path / "vic.yaml"
    recipe.write_text(yaml.safe_dump({**tree, "eval": {}}))
    assert mixtune_main(["train", "-c", str(recipe)]) == 0
    final = tmp_path / "run" / "final"
    want = f"{VICUNA_SYSTEM} USER: hi ASSISTANT:"

    def rendered(folder) -> str:
        return AutoTokenizer.from_pretrained(str(folder)).apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)

    assert (final / "chat_template.jinja").exists() and rendered(final) == want
    assert mixtune_main(["export", str(tmp_path / "run"), "--merge", "--out", str(tmp_path / "merged")]) == 0
    assert mixtune_main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "whole")]) == 0
    for folder in (tmp_path / "merged", tmp_path / "whole", tmp_path / "whole" / "base"):
        assert rendered(folder) == want, folder
    # a later eval with another template says so in one line; with the default it uses the saved one silently
    eval_recipe = tmp_path / "eval.yaml"
    eval_recipe.write_text(yaml.safe_dump({**tree, "out_dir": str(tmp_path / "ev"), "model": {"path": str(final)},
                                           "data": {"template": "chatml"}}))
    capsys.readouterr()
    assert mixtune_main(["eval", "run", "-c", str(eval_recipe)]) == 0
    warn = [ln for ln in capsys.readouterr().err.splitlines() if "differs" in ln]
    assert warn == [("mixtune eval run: warning: data.template=chatml differs from the chat template saved with the "
                    "model (vicuna); using chatml as the recipe says")]
    assert mixtune_main(["eval", "run", "-c", str(eval_recipe), "data.template=tokenizer"]) == 0
    assert "differs" not in capsys.readouterr().err
