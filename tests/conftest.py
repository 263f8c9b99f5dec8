"""Shared fixtures: a tiny tokenizer trained here, tiny Llama recipes, chat examples. Everything offline."""

from __future__ import annotations

import os
import random
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(os.environ.get("MIXTUNE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
"""The real data (../shared/data beside the repository, or MIXTUNE_DATA_DIR): the one place tests find it."""


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder. Missing it is a failure under CI=true (CI always has it beside the clone), and a
    visible skip elsewhere."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    message = f"the real data folder {SHARED_DATA} is missing (set MIXTUNE_DATA_DIR or put shared/ beside the repo)"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(message)
    pytest.skip(message)


needs_data = pytest.mark.usefixtures("shared_data")
"""Mark a test that reads ../shared/data."""

WORDS = ["the", "a", "of", "to", "and", "in", "is", "was", "for", "on", "with", "as", "by", "at", "from", "name", "born", "city", "university", "works", "major", "answer", "question", "total", "apples", "books", "cost", "each", "how", "many", "what", "which", "def", "return", "list", "sum", "if", "else", "for", "while", "print", "write", "note", "about", "short", "please", "reply", "yes", "no"]


def chat_examples(n: int, seed: int = 0, ability: str = "general", source: str = "toy") -> list[dict]:
    """Data-contract records: `n` single-turn chats with short random questions and answers."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        q = " ".join(rng.choices(WORDS, k=rng.randint(3, 12))) + f" {rng.randint(0, 999)}?"
        a = " ".join(rng.choices(WORDS, k=rng.randint(2, 20))) + f" #### {rng.randint(0, 99)}"
        out.append({"id": f"{source}/{i}", "source": source, "ability": ability, "task_type": int(i % 3 == 0),
                    "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return out


def pair_examples(n: int, seed: int = 0, source: str = "prefs", chosen: str = "yes", rejected: str = "no"
                  ) -> list[dict]:
    """Preference-pair records of a learnable toy task: the chosen answer starts with `chosen`, the rejected one
    with `rejected`, the rest of both answers is the same random words."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        q = " ".join(rng.choices(WORDS, k=rng.randint(3, 10))) + "?"
        a = " ".join(rng.choices(WORDS, k=rng.randint(2, 12)))
        out.append({"id": f"{source}/{i}", "source": source, "ability": "preference", "task_type": 0, "weight": 1.0,
                    "messages": [{"role": "user", "content": q}], "chosen": f"{chosen} {a}", "rejected": f"{rejected} {a}"})
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    from mixtune.data.tokenizer_train import train_tokenizer

    root = tmp_path_factory.mktemp("tok")
    rng = random.Random(0)
    lines = [" ".join(rng.choices(WORDS, k=12)) + f" {rng.randint(0, 99999)}." for _ in range(3000)]
    lines += ["def f(x):\n    return x + 1\n"] * 50
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(lines))
    train_tokenizer([corpus], vocab_size=400, min_frequency=2, out_dir=root / "tokenizer")
    return root / "tokenizer"


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    import json

    rng = random.Random(1)
    path = tmp_path_factory.mktemp("corpus") / "pretrain.jsonl"
    with path.open("w") as f:
        for _ in range(400):
            f.write(json.dumps({"text": " ".join(rng.choices(WORDS, k=40)) + f" {rng.randint(0, 9999)}."}) + "\n")
    return path


def tiny_model_section(tokenizer_dir) -> dict:
    return {"tokenizer": str(tokenizer_dir), "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
            "num_heads": 2, "max_position_embeddings": 512}


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A freshly initialised tiny Llama saved as a plain checkpoint (`final/`), with the tiny tokenizer."""
    from mixtune.config import Recipe
    from mixtune.model.load import build_llama, load_tokenizer
    from mixtune.train.save import save_final

    root = tmp_path_factory.mktemp("base")
    recipe = Recipe.model_validate({"name": "b", "model": tiny_model_section(tiny_tokenizer_dir)})
    tok = load_tokenizer(tiny_tokenizer_dir)
    save_final(build_llama(recipe.model, tok), tok, root / "final", adapter="none", base=None)
    return root / "final"
