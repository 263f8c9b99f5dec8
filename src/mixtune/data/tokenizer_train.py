"""`mixtune tokenizer -c recipe.yaml`: train a byte-level BPE tokenizer (HF `tokenizers`) for the mini-lab.

Digits are split into single-digit tokens before byte-level BPE (a tiny model learns to add only with one token per
digit; DESIGN.md), and the tokenizer trains on the corpus AND the SFT texts so their words do not fragment. The
result is a transformers `PreTrainedTokenizerFast` (saved with save_pretrained, loadable with AutoTokenizer) with
`<|endoftext|>` as bos/eos, `<|pad|>`, and a ChatML chat template whose assistant turns sit inside
`{% generation %}` so `return_assistant_tokens_mask=True` marks exactly the assistant content and its `<|im_end|>`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mixtune.cliutil import parse_recipe, recipe_parser
from mixtune.jsonl import iter_jsonl

EOS, PAD, IM_START, IM_END = "<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [EOS, PAD, IM_START, IM_END]

if TYPE_CHECKING:  # imported when a tokenizer is trained, so `mixtune tokenizer --help` stays instant
    from tokenizers import Tokenizer, trainers
    from transformers import PreTrainedTokenizerFast

# ChatML. The assistant content and its <|im_end|> are the generation (trained, masked in); the newline after
# <|im_end|> is not, since generation stops at <|im_end|>.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def iter_texts(path: Path) -> Iterator[str]:
    """Training texts of one file: JSONL rows give `text` and every message `content` (and `prompt`/`question`
    fields of benchmark-like rows); any other file is read line by line as plain text."""
    if path.suffix != ".jsonl":
        with path.open(encoding="utf-8") as f:
            yield from f
        return
    for _, row in iter_jsonl(path, what="tokenizer training file"):
        if isinstance(row.get("text"), str):
            yield row["text"]
        for message in row.get("messages") or []:
            yield message["role"]  # role names appear in every rendered turn; let them become single tokens
            yield message["content"]
        for key in ("prompt", "question"):
            if isinstance(row.get(key), str):
                yield row[key]


def build_backend(vocab_size: int, min_frequency: int) -> tuple[Tokenizer, trainers.BpeTrainer]:
    """An untrained byte-level BPE with single-digit pre-tokenization, and its trainer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    # Newlines are isolated so no token spans the template's "\n" after "<|im_start|>assistant" and the indent of a
    # code body: the assistant turn then tokenizes the same inside a conversation, alone, and at generation time.
    # Digits split so no merge spans two digits; add_prefix_space=False keeps decode(encode(x)) == x.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    return tokenizer, trainer


def train_tokenizer(files: list[Path], vocab_size: int, min_frequency: int, out_dir: str | Path | None = None
                    ) -> PreTrainedTokenizerFast:
    """Train on the texts of `files` (see `iter_texts`) and wrap as a transformers tokenizer.

    Special tokens get ids 0-3 (`<|endoftext|>` = 0). When `out_dir` is given the tokenizer is saved there with
    save_pretrained. Raises FileNotFoundError for a missing file.
    """
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"tokenizer training file not found: {path}")
    from transformers import PreTrainedTokenizerFast

    backend, trainer = build_backend(vocab_size, min_frequency)
    backend.train_from_iterator((t for p in files for t in iter_texts(Path(p))), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=EOS, eos_token=EOS, unk_token=None, pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END], chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False, model_max_length=1_000_000,
    )
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def default_files(world_dir: str | Path) -> list[Path]:
    """The world's pre-training corpus and SFT sources."""
    world_dir = Path(world_dir)
    files = [world_dir / "corpus" / "pretrain.jsonl"]
    files += [world_dir / "sft" / f"{a}.jsonl" for a in ("math", "code", "general", "knowledge")]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"world files missing (run `mixtune world` first): {', '.join(missing)}")
    return files


def main(argv: list[str]) -> int:
    """Train on `tokenizer.files` (default: the world's corpus + SFT sources) and save to `tokenizer.out_dir`."""
    parser = recipe_parser("tokenizer", "Train a byte-level BPE tokenizer (single-digit numbers, ChatML template) "
                           "on the mini-lab world or on given files.", sections=["tokenizer", "world"])
    _, recipe = parse_recipe(parser, argv)
    cfg = recipe.tokenizer
    files = [Path(f) for f in cfg.files] if cfg.files else default_files(recipe.world.out_dir)
    start = time.perf_counter()
    tokenizer = train_tokenizer(files, cfg.vocab_size, cfg.min_frequency, cfg.out_dir)
    elapsed = time.perf_counter() - start
    print(f"mixtune tokenizer: vocabulary {len(tokenizer):,} tokens from {len(files)} file(s) in {elapsed:.1f} s "
          f"-> {cfg.out_dir}")
    return 0
