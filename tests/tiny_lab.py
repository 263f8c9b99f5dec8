"""A tiny mini-lab for the post-training analyses' tests: a world of a few dozen examples per ability, a tokenizer
trained on it and a base pre-trained for a few steps (seconds; abilities near 0, which these tests do not need)."""

from __future__ import annotations

from pathlib import Path

import yaml


def tiny_base_tree(root: Path, steps: int = 3, **train) -> dict:
    """The recipe tree of a tiny base under `root`: a world of a few dozen examples per ability, a 400-token
    tokenizer, a 2-layer Llama pre-trained for `steps` steps (`train`: more train-section fields)."""
    return {
        "name": "tiny-base", "out_dir": str(root / "base"),
        "world": {"out_dir": str(root / "world"), "n_people": 20, "bio_exposures": 2, "math_train": 40,
                  "math_test": 10, "code_train": 40, "code_test": 5, "instruct_train": 40, "instruct_test": 5,
                  "knowledge_test": 5, "pretrain_math": 100, "pretrain_code": 30, "pretrain_text": 50},
        "tokenizer": {"out_dir": str(root / "tok"), "vocab_size": 400},
        "model": {"tokenizer": str(root / "tok"), "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
                  "num_heads": 2, "max_position_embeddings": 512},
        "train": {"max_steps": steps, "batch_size": 2, "seq_len": 64, "bf16": False, "threads": 1, "log_every": 1,
                  **train},
    }


def make_tiny_lab(root: Path, steps: int = 3) -> dict:
    """{recipe (base recipe path), world, tokenizer, final (the base checkpoint)} under `root`."""
    from mixtune.config import load_recipe
    from mixtune.study.base import prepare_base

    tree = tiny_base_tree(root, steps)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "base.yaml"
    path.write_text(yaml.safe_dump(tree))
    final = prepare_base(load_recipe(path), log=lambda _: None)
    return {"recipe": str(path), "world": tree["world"]["out_dir"], "tokenizer": tree["tokenizer"]["out_dir"],
            "final": final}
