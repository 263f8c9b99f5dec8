"""Recipe sections of the mini-lab's first floor: the world generators and the tokenizer trained on them."""

from __future__ import annotations

from pydantic import Field

from mixtune.config.base import Section


class WorldConfig(Section):
    """The mini-lab world: seeded generators for people, math, code, instructions and knowledge QA."""

    seed: int = 1234
    """Seed of every generator; the same seed gives byte-identical files."""
    out_dir: str = "runs/world-mini"
    """Folder the world files are written to (corpus, SFT sources, benchmarks)."""
    n_people: int = Field(400, ge=10)
    """Number of bioS-style people."""
    bio_exposures: int = Field(20, ge=1)
    """Biographies per person in the pre-training corpus (template and sentence order re-drawn each time)."""
    qa_train_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    """Fraction of people whose knowledge questions go to SFT; questions about the rest are held out."""
    math_train: int = Field(4000, ge=0)
    """Math word problems for SFT."""
    math_test: int = Field(300, ge=0)
    """Held-out math word problems."""
    code_train: int = Field(4000, ge=0)
    """Code tasks for SFT."""
    code_test: int = Field(200, ge=0)
    """Held-out code tasks (HumanEval format, hidden tests)."""
    instruct_train: int = Field(4000, ge=0)
    """Verifiable-instruction examples for SFT (the mini-lab's general ability)."""
    instruct_test: int = Field(300, ge=0)
    """Held-out verifiable-instruction prompts (IFEval format)."""
    knowledge_test: int = Field(300, ge=0)
    """Held-out knowledge questions, drawn from the questions about the held-out people (1 - qa_train_fraction)."""
    pretrain_math: int = Field(20000, ge=0)
    """Arithmetic statements in the pre-training corpus."""
    pretrain_code: int = Field(6000, ge=0)
    """Code snippets in the pre-training corpus."""
    pretrain_text: int = Field(10000, ge=0)
    """Plain-text paragraphs in the pre-training corpus."""
    preference_math: int = Field(1000, ge=0)
    """Math preference pairs: worked solution vs one with a wrong step or a wrong final answer."""
    preference_code: int = Field(1000, ge=0)
    """Code preference pairs: canonical body vs a mutant that fails the hidden tests."""
    preference_instruct: int = Field(1000, ge=0)
    """Instruction preference pairs: a response that follows every instruction vs one that breaks one."""


class TokenizerConfig(Section):
    """Byte-level BPE trained with HF tokenizers; digits split into single tokens."""

    vocab_size: int = Field(2048, ge=300)
    """Target vocabulary size, special tokens included."""
    min_frequency: int = Field(2, ge=1)
    """Minimum pair frequency for a merge."""
    files: list[str] = Field(default_factory=list)
    """Text/JSONL files to train on; empty means the world's corpus and SFT sources."""
    out_dir: str = "runs/tokenizer-mini"
    """Folder the transformers tokenizer is saved to."""
