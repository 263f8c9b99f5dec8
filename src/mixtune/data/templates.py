"""Chat templates and response-only labels.

Templates (dict literal `TEMPLATES`): "tokenizer" (the tokenizer's own `chat_template`), "chatml", and "vicuna"
(Vicuna v1.1, the prompt of the DMT paper: `{system} USER: {q} ASSISTANT: {a}</s>USER: ...` with the tokenizer's
eos in place of `</s>`, as FastChat's `vicuna_v1.1` conversation). All three are Jinja chat templates rendered by
transformers' `apply_chat_template`; only the labelling is ours.

Labelling by prefix rendering (works for any template, generation markers or not): for assistant turn i, the text
rendered for `messages[:i]` with the generation prompt is a prefix of the full text; what follows up to the end of the
turn's content is the answer, trained together with the end-of-turn special token right after it (`<|im_end|>`,
eos). Each piece is encoded on its own and the ids are concatenated, so an assistant turn is encoded as one unit, the
way it is generated after `render_prompt(...)`: a code body's leading "\\n    " is never merged with the template's
newline in training when generation cannot merge it either (DESIGN "What a mini-lab needs"). With a byte-level BPE
tokenizer the concatenation equals tokenizing the whole text whenever boundaries fall on special tokens or on a
newline followed by a non-space character.
"""

from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (prompt, template text, padding)."""

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
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
    "vicuna": VICUNA_TEMPLATE,
}


def chat_template(template: str, tokenizer: Any) -> str:
    """The Jinja source of `template`; unknown names and a tokenizer without a chat_template fail clearly."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown chat template {template!r}; valid: {sorted(TEMPLATES)}")
    source = TEMPLATES[template] or getattr(tokenizer, "chat_template", None)
    if not source:
        raise ValueError("template 'tokenizer' but the tokenizer has no chat_template; use 'chatml' or 'vicuna'")
    return source


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
    plus its end-of-turn special token. Raises ValueError when the template does not render prefixes consistently.
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
            raise ValueError(f"template {template!r} does not render conversation prefixes consistently (turn {i})")
        content = msg["content"]
        at = full.find(content, len(prefix))
        if at < 0:  # some templates trim the content
            content = content.strip()
            at = full.find(content, len(prefix))
        if at < 0:
            raise ValueError(f"template {template!r}: assistant turn {i} content not found in the rendered text")
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
    probe conversation), the eos, and for Vicuna also "USER:" (a model that skips eos starts the next turn)."""
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    specials = _special_texts(tokenizer)
    stops: list[str] = []
    for text, trained in segment_conversation(probe, tokenizer, template):
        stops += [next((tok for tok in specials if text.endswith(tok)), "")] if trained else []
    stops += [tokenizer.eos_token or ""] + (["USER:"] if template == "vicuna" else [])
    return list(dict.fromkeys(s for s in stops if s))
