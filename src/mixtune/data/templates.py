"""Chat templates and response-only labels.

Templates (dict literal `TEMPLATES`): "tokenizer" (the tokenizer's own `chat_template`), and one Jinja template per
common model family, each the format its instruct models were trained with:
- "chatml" (`<|im_start|>role\ncontent<|im_end|>\n`) and "qwen2" (ChatML with Qwen2-Instruct's default system
  message "You are a helpful assistant." when the conversation has none);
- "llama3" (Llama 3 Instruct: `<|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>`,
  content trimmed as Meta's template does);
- "mistral" (`<s>[INST] q [/INST] a</s>[INST] q2 [/INST]`; a system message is prepended to the first user turn,
  as mistral-common does);
- "gemma" (`<bos><start_of_turn>user\nq<end_of_turn>\n<start_of_turn>model\na<end_of_turn>\n`; system prepended to
  the first user turn, as Gemma 3's template does);
- "vicuna" (Vicuna v1.1, the prompt of the DMT paper: `{system} USER: {q} ASSISTANT: {a}</s>USER: ...` with the
  tokenizer's eos in place of `</s>`, as FastChat's `vicuna_v1.1` conversation).
`auto` (a recipe value, resolved once per run by `install_template`) is the checkpoint's own chat_template when it
has one, else the family's template picked from the checkpoint's `model_type` (`FAMILY_OF`). The resolved template
is installed on the tokenizer, so it is the one saved with the trained model (`chat_template.jinja`) and every later
`apply_chat_template`, vLLM or `mixtune eval` prompts the model in the format it was trained with.
All are rendered by transformers' `apply_chat_template`; only the labelling is ours.

Labelling by prefix rendering (works for any template, generation markers or not): for assistant turn i, the text
rendered for `messages[:i]` with the generation prompt is a prefix of the full text; what follows up to the end of the
turn's content is the answer, trained together with the end-of-turn special token right after it (`<|im_end|>`,
`<|eot_id|>`, `<end_of_turn>`, eos). Each piece is encoded on its own and the ids are concatenated, so an assistant
turn is encoded as one unit, the way it is generated after `render_prompt(...)`: a code body's leading "\\n    " is
never merged with the template's newline in training when generation cannot merge it either (DESIGN "What a mini-lab
needs"). With a byte-level BPE tokenizer the concatenation equals tokenizing the whole text whenever boundaries fall
on special tokens or on a newline followed by a non-space character.
"""

from __future__ import annotations

from typing import Any

from mixtune.errors import UserError

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (prompt, template text, padding)."""

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

QWEN2_SYSTEM = "You are a helpful assistant."
"""Qwen2-Instruct's default system message (its tokenizer_config chat_template)."""

QWEN2_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + QWEN2_SYSTEM + "<|im_end|>\\n' }}{% endif %}" + CHATML_TEMPLATE
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Mistral and Gemma have no system role: a system message becomes the head of the first user turn.
_SYSTEM_INTO_FIRST_USER = (
    "{% set ns = namespace(system='') %}"
    "{% if messages[0]['role'] == 'system' %}{% set ns.system = messages[0]['content'] + '\\n\\n' %}{% endif %}"
)

MISTRAL_TEMPLATE = (
    "{{ bos_token }}" + _SYSTEM_INTO_FIRST_USER +
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
    "{% set ns.system = '' %}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)

GEMMA_TEMPLATE = (
    "{{ bos_token }}" + _SYSTEM_INTO_FIRST_USER +
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '<start_of_turn>user\\n' + ns.system + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% set ns.system = '' %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<start_of_turn>model\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
"""Vicuna v1.1 system message (FastChat `vicuna_v1.1`, the DMT paper's prompt)."""

VICUNA_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% else %}{{ '" + VICUNA_SYSTEM.replace("'", "\\'") + "' }}{% endif %}{{ ' ' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

TEMPLATES: dict[str, str | None] = {
    "tokenizer": None,  # the tokenizer's own chat_template
    "chatml": CHATML_TEMPLATE,
    "qwen2": QWEN2_TEMPLATE,
    "llama3": LLAMA3_TEMPLATE,
    "mistral": MISTRAL_TEMPLATE,
    "gemma": GEMMA_TEMPLATE,
    "vicuna": VICUNA_TEMPLATE,
}

SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "chatml": ("<|im_start|>", "<|im_end|>"),
    "qwen2": ("<|im_start|>", "<|im_end|>"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
}
"""Special tokens a family's template needs in the vocabulary (mistral and vicuna end turns with eos)."""

NEXT_TURN_STOPS: dict[str, tuple[str, ...]] = {"vicuna": ("USER:",), "mistral": ("[INST]",)}
"""Plain-text starts of the next turn: a model that skips its eos would go on with them."""

FAMILY_OF: dict[str, str] = {
    "llama": "llama3",  # a Llama checkpoint without <|eot_id|> in its vocabulary (LLaMA 1/2) gets vicuna
    "mistral": "mistral", "mixtral": "mistral",
    "qwen2": "qwen2", "qwen2_moe": "qwen2", "qwen3": "chatml", "qwen3_moe": "chatml",
    "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3_text": "gemma",
}
"""config.json `model_type` -> the family's template for `data.template: auto` when the checkpoint has none."""

PROBE = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]


class TemplateError(UserError, ValueError):
    """A chat template that cannot be used with this tokenizer; the message says which to set instead."""


def chat_template(template: str, tokenizer: Any) -> str:
    """The Jinja source of `template`; unknown names and a tokenizer without a chat_template fail clearly.

    `auto` is the tokenizer's template once `install_template` has resolved it (before that: the checkpoint's own)."""
    if template not in TEMPLATES and template != "auto":
        raise TemplateError(f"unknown chat template {template!r}; valid: auto, {', '.join(TEMPLATES)}")
    source = TEMPLATES.get(template) or getattr(tokenizer, "chat_template", None)
    if not source:
        where = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
        raise TemplateError(f"data.template={template} but {where} has no chat_template; set data.template to a "
                            f"family template ({', '.join(n for n in TEMPLATES if n != 'tokenizer')}) or auto")
    return source


def family_template(model_type: str | None, tokenizer: Any) -> str:
    """The registry template of a checkpoint's family (`FAMILY_OF`); TemplateError for an unknown family."""
    name = FAMILY_OF.get(model_type or "")
    if name == "llama3" and "<|eot_id|>" not in tokenizer.get_vocab():
        name = "vicuna"  # LLaMA 1/2 base checkpoints: the Vicuna format (the DMT paper's)
    if name is None:
        raise TemplateError(f"data.template=auto: the checkpoint has no chat_template and model_type "
                            f"{model_type!r} has no known family ({', '.join(sorted(FAMILY_OF))}); set data.template "
                            f"to one of {', '.join(n for n in TEMPLATES if n != 'tokenizer')}")
    return name


def resolve_template(template: str, tokenizer: Any, model_type: str | None = None) -> str:
    """A registry name for `template`: `auto` becomes `tokenizer` (the checkpoint has a chat_template) or its
    family's template; other names are returned as they are (after checking they can be used)."""
    if template == "auto":
        return "tokenizer" if getattr(tokenizer, "chat_template", None) else family_template(model_type, tokenizer)
    chat_template(template, tokenizer)
    return template


def template_name(source: str | None) -> str:
    """The registry name of a Jinja source, or "custom"."""
    return next((name for name, text in TEMPLATES.items() if text is not None and text == source), "custom")


def install_template(tokenizer: Any, template: str, model_type: str | None = None) -> tuple[str, list[str]]:
    """Resolve `template` and set it as the tokenizer's chat_template (so `save_pretrained` saves the template the
    model trains with); returns (resolved name, warnings). Warns when an explicit template renders differently
    from the checkpoint's own one, and when the vocabulary lacks the template's special tokens."""
    resolved = resolve_template(template, tokenizer, model_type)
    source = chat_template(resolved, tokenizer)
    warnings = []
    own = getattr(tokenizer, "chat_template", None)
    if template not in ("tokenizer", "auto") and own and _render(PROBE, tokenizer, own, False) != _render(
            PROBE, tokenizer, source, False):
        warnings.append(f"data.template={template} differs from the chat template saved with the model "
                        f"({template_name(own)}); using {template} as the recipe says")
    missing = [t for t in SPECIAL_TOKENS.get(resolved, ()) if t not in tokenizer.get_vocab()]
    if missing:
        warnings.append(f"data.template={resolved}: the vocabulary has no {', '.join(missing)}; they are encoded as "
                        f"plain text (use the checkpoint's own family template, or data.template=auto)")
    segment_conversation(PROBE, tokenizer, resolved)  # a template that cannot be labelled fails here, not mid-run
    tokenizer.chat_template = source
    return resolved, warnings


def _render(messages: list[dict], tokenizer: Any, source: str, generation_prompt: bool) -> str:
    # Only role/content reach the template: extra example fields must not change the rendering.
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(msgs, chat_template=source, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """Prepend a system message when given and the conversation has none."""
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return list(messages)


def render_prompt(messages: list[dict], tokenizer: Any, template: str, system_prompt: str | None = None) -> str:
    """The generation prompt: the conversation so far (ending with a user turn; a trailing assistant turn is dropped)
    rendered so that the text ends exactly where the assistant's answer starts (`...<|im_start|>assistant\\n`,
    `... ASSISTANT:`). Evaluation tokenises it with add_special_tokens=False."""
    msgs = with_system(messages, system_prompt)
    if msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    return _render(msgs, tokenizer, chat_template(template, tokenizer), generation_prompt=True)


def _special_texts(tokenizer: Any) -> list[str]:
    """Special / added token strings, longest first (so `<|im_end|>` wins over a shorter prefix)."""
    texts = set(getattr(tokenizer, "all_special_tokens", []) or [])
    texts |= {str(t) for t in (getattr(tokenizer, "get_added_vocab", dict)() or {})}
    return sorted((t for t in texts if t), key=len, reverse=True)


def _end_of_turn(rest: str, specials: list[str]) -> int:
    """Length of the end-of-turn text at the start of `rest`: optional whitespace then one special token, else 0."""
    stripped = rest.lstrip(" ")
    lead = len(rest) - len(stripped)
    for tok in specials:
        if stripped.startswith(tok):
            return lead + len(tok)
    return 0


def segment_conversation(messages: list[dict], tokenizer: Any, template: str,
                         system_prompt: str | None = None) -> list[tuple[str, bool]]:
    """The full rendered conversation as consecutive (text, trained) pieces; joined, they give the rendered text.

    Trained pieces are each assistant turn's answer (from the end of its generation prompt to the end of its content)
    plus its end-of-turn special token. Raises TemplateError when the template does not render prefixes consistently.
    """
    source = chat_template(template, tokenizer)
    msgs = with_system(messages, system_prompt)
    full = _render(msgs, tokenizer, source, generation_prompt=False)
    specials = _special_texts(tokenizer)
    pieces: list[tuple[str, bool]] = []
    done = 0  # characters of `full` already assigned to pieces
    for i, msg in enumerate(msgs):
        if msg["role"] != "assistant":
            continue
        prefix = _render(msgs[:i], tokenizer, source, generation_prompt=True)
        if not full.startswith(prefix) or len(prefix) < done:
            raise TemplateError(f"template {template!r} does not render conversation prefixes consistently (turn {i}); "
                                "use a template from the registry")
        content = msg["content"]
        at = full.find(content, len(prefix))
        if at < 0:  # some templates trim the content
            content = content.strip()
            at = full.find(content, len(prefix))
        if at < 0:
            raise TemplateError(f"template {template!r}: assistant turn {i} content not found in the rendered text")
        end = at + len(content)
        end += _end_of_turn(full[end:], specials)
        if len(prefix) > done:
            pieces.append((full[done:len(prefix)], False))
        pieces.append((full[len(prefix):end], True))
        done = end
    if done < len(full):
        pieces.append((full[done:], False))
    return pieces


def tokenize_example(example: dict, tokenizer: Any, template: str, max_seq_len: int,
                     system_prompt: str | None = None) -> dict:
    """Token ids and response-only labels of one example.

    Returns `{input_ids: list[int], labels: list[int], truncated: bool, n_tokens: int (before truncation),
    n_target_tokens: int (after truncation)}`; labels equal input_ids on assistant answers and their end-of-turn
    token, IGNORE_INDEX elsewhere. A `text` example (no messages) is encoded with eos appended and fully trained.
    Sequences longer than max_seq_len keep their first max_seq_len tokens (the caller counts `truncated`).
    Labels are not shifted: position p's label is predicted from position p-1 (the transformers convention).
    """
    if "messages" in example:
        pieces = segment_conversation(example["messages"], tokenizer, template, system_prompt)
    else:
        pieces = [(example["text"] + (tokenizer.eos_token or ""), True)]
    encoded = tokenizer([text for text, _ in pieces], add_special_tokens=False)["input_ids"]
    input_ids: list[int] = []
    labels: list[int] = []
    for ids, (_, trained) in zip(encoded, pieces):
        input_ids.extend(ids)
        labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))
    n_tokens = len(input_ids)
    truncated = n_tokens > max_seq_len
    input_ids, labels = input_ids[:max_seq_len], labels[:max_seq_len]
    n_target = sum(1 for lab in labels[1:] if lab != IGNORE_INDEX)  # position 0 is never predicted
    return {"input_ids": input_ids, "labels": labels, "truncated": truncated, "n_tokens": n_tokens,
            "n_target_tokens": n_target}


def stop_strings(template: str, tokenizer: Any) -> list[str]:
    """Strings that end an assistant answer in generation: the template's end-of-turn token (found by rendering a
    probe conversation), the eos, and for Vicuna / Mistral also the next turn's start ("USER:", "[INST]": a model
    that skips eos starts the next turn)."""
    probe = PROBE
    specials = _special_texts(tokenizer)
    stops: list[str] = []
    for text, trained in segment_conversation(probe, tokenizer, template):
        stops += [next((tok for tok in specials if text.endswith(tok)), "")] if trained else []
    name = template if template in TEMPLATES and template != "tokenizer" else template_name(chat_template(template,
                                                                                                          tokenizer))
    stops += [tokenizer.eos_token or "", *NEXT_TURN_STOPS.get(name, ())]
    return list(dict.fromkeys(s for s in stops if s))
