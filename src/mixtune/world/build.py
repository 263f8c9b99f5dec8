"""Generate the whole mini-lab world from a WorldConfig and write it in the layout of docs/CONTRACTS.md.

Every generator has its own `random.Random` seeded from ("<part>/<seed>"), so changing one count never changes
another part, and the same config gives byte-identical files. Held-out sets are drawn first and the training draws
exclude their keys (math: equations; code: primitives + parameters; instructions: base request + instruction ids;
knowledge: people).
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mixtune.config import WorldConfig
from mixtune.runs import atomic_write_text
from mixtune.world import arithmetic, codetasks, instruct, people, preference, text

SFT_ABILITIES = ("math", "code", "general", "knowledge")
BENCH_FILES = {"math": "math_test", "code": "code_test", "general": "instruct_test", "knowledge": "knowledge_test"}
PREFERENCE_FILES = ("preference_math", "preference_code", "preference_instruct")


def _rng(part: str, seed: int) -> random.Random:
    return random.Random(f"{part}/{seed}")


def _jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _sft(ability: str, i: int, user: str, assistant: str, **extra: Any) -> dict[str, Any]:
    """An SFT record of the data contract; id `minilab/<ability>/train/<i>`."""
    return {"id": f"minilab/{ability}/train/{i}", "source": f"minilab/{ability}", "ability": ability,
            "task_type": 1 if ability == "knowledge" else 0,
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], **extra}


@functools.lru_cache(maxsize=4)
def held_out(cfg: WorldConfig) -> tuple[list, list, list]:
    """The held-out math problems, code tasks and instruction examples (drawn first; every training draw, SFT or
    preference, excludes their keys). Cached: the SFT and the preference builders both need them."""
    return (arithmetic.make_problems(cfg.math_test, _rng("math-test", cfg.seed)),
            codetasks.make_tasks(cfg.code_test, _rng("code-test", cfg.seed)),
            instruct.make_examples(cfg.instruct_test, _rng("instruct-test", cfg.seed), unique_keys=True))


def build_math(cfg: WorldConfig) -> tuple[list[dict], list[dict]]:
    """(SFT records, GSM8K-format benchmark rows)."""
    test = held_out(cfg)[0]
    train = arithmetic.make_problems(cfg.math_train, _rng("math-train", cfg.seed), {p.signature for p in test})
    sft = [_sft("math", i, p.question, p.solution, answer=str(p.answer)) for i, p in enumerate(train)]
    bench = [{"task_id": f"minilab_math/{i}", "question": p.question, "answer": p.gsm8k_answer}
             for i, p in enumerate(test)]
    return sft, bench


def build_code(cfg: WorldConfig, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """(SFT records, HumanEval-format benchmark rows); raises AssertionError if a canonical solution fails."""
    test = held_out(cfg)[1]
    train = codetasks.make_tasks(cfg.code_train, _rng("code-train", cfg.seed), {t.key for t in test})
    for t in tqdm(test + train, desc="world: check code solutions", leave=False, disable=not progress):
        assert codetasks.passes(t.program, t.test, t.entry_point), f"canonical solution fails: {t.entry_point}"
    sft = [_sft("code", i, t.prompt, t.completion, tests=t.test, entry_point=t.entry_point)
           for i, t in enumerate(train)]
    bench = [{"task_id": f"minilab_code/{i}", "prompt": t.prompt, "canonical_solution": t.completion,
              "test": t.test, "entry_point": t.entry_point} for i, t in enumerate(test)]
    return sft, bench


def build_general(cfg: WorldConfig) -> tuple[list[dict], list[dict]]:
    """(SFT records, IFEval-format benchmark rows)."""
    test = held_out(cfg)[2]
    train = instruct.make_examples(cfg.instruct_train, _rng("instruct-train", cfg.seed), {e.key for e in test})
    sft = [_sft("general", i, e.prompt, e.response, instruction_ids=list(e.instruction_ids), kwargs=list(e.kwargs))
           for i, e in enumerate(train)]
    bench = [{"task_id": f"minilab_instruct/{i}", "key": i, "prompt": e.prompt,
              "instruction_id_list": list(e.instruction_ids), "kwargs": list(e.kwargs)} for i, e in enumerate(test)]
    return sft, bench


def build_preference(cfg: WorldConfig) -> dict[str, list[dict]]:
    """Preference pair files (world/preference.py), each from its own generator, disjoint from the benchmarks."""
    math_test, code_test, instruct_test = held_out(cfg)
    return {
        "preference_math": preference.math_pairs(cfg.preference_math, _rng("preference-math", cfg.seed),
                                                 {p.signature for p in math_test}),
        "preference_code": preference.code_pairs(cfg.preference_code, _rng("preference-code", cfg.seed),
                                                 {t.key for t in code_test}),
        "preference_instruct": preference.instruct_pairs(cfg.preference_instruct,
                                                         _rng("preference-instruct", cfg.seed),
                                                         {e.key for e in instruct_test}),
    }


def build_knowledge(cfg: WorldConfig, train_people: list[people.Person], held_out: list[people.Person]
                    ) -> tuple[list[dict], list[dict]]:
    """(SFT records about `train_people`, NQ-open-format questions about `held_out` people)."""
    sft = []
    for person in train_people:
        for key in people.ATTRIBUTES:
            q, a = people.question(person, key)
            sft.append(_sft("knowledge", len(sft), q, a, answer=a))
    pairs = [people.question(p, key) for p in held_out for key in people.ATTRIBUTES]
    if cfg.knowledge_test < len(pairs):
        picked = sorted(_rng("knowledge-test", cfg.seed).sample(range(len(pairs)), cfg.knowledge_test))
        pairs = [pairs[i] for i in picked]
    bench = [{"task_id": f"minilab_knowledge/{i}", "question": q, "answer": [a]} for i, (q, a) in enumerate(pairs)]
    return sft, bench


def build_corpus(cfg: WorldConfig, population: list[people.Person], progress: bool = True) -> list[str]:
    """Pre-training documents (biographies, arithmetic, code snippets, plain text), shuffled."""
    docs: list[str] = []
    bio_rng = _rng("bios", cfg.seed)
    for _ in tqdm(range(cfg.bio_exposures), desc="world: biographies", disable=not progress, leave=False):
        docs.extend(people.biography(p, bio_rng) for p in population)
    math_rng, code_rng, text_rng = _rng("pretrain-math", cfg.seed), _rng("pretrain-code", cfg.seed), _rng(
        "pretrain-text", cfg.seed)
    docs.extend(arithmetic.arithmetic_statement(math_rng) for _ in range(cfg.pretrain_math))
    docs.extend(codetasks.snippet(code_rng) for _ in range(cfg.pretrain_code))
    docs.extend(text.paragraph(text_rng) for _ in range(cfg.pretrain_text))
    _rng("corpus-shuffle", cfg.seed).shuffle(docs)
    return docs


def generate_world(cfg: WorldConfig, out_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Write corpus/, sft/ (SFT sources and preference pairs), bench/ and world.json under `out_dir` (default
    `cfg.out_dir`); return world.json's data.

    Files are written atomically; nothing in them depends on the time or the machine.
    """
    out = Path(out_dir if out_dir is not None else cfg.out_dir)
    population = people.make_people(cfg.n_people, cfg.seed)
    train_people, held_out = people.split_people(population, cfg.qa_train_fraction, cfg.seed)
    parts = {"math": build_math(cfg), "code": build_code(cfg, progress), "general": build_general(cfg),
             "knowledge": build_knowledge(cfg, train_people, held_out)}
    docs = build_corpus(cfg, population, progress)
    pairs = build_preference(cfg)

    counts: dict[str, int] = {}
    for ability, (sft, bench) in parts.items():
        atomic_write_text(out / "sft" / f"{ability}.jsonl", _jsonl(sft))
        atomic_write_text(out / "bench" / f"{BENCH_FILES[ability]}.jsonl", _jsonl(bench))
        counts[f"sft/{ability}"], counts[f"bench/{BENCH_FILES[ability]}"] = len(sft), len(bench)
    for name, rows in pairs.items():
        atomic_write_text(out / "sft" / f"{name}.jsonl", _jsonl(rows))
        counts[f"sft/{name}"] = len(rows)
    atomic_write_text(out / "corpus" / "pretrain.jsonl", _jsonl({"text": d} for d in docs))
    counts["corpus/documents"] = len(docs)
    corpus_chars = sum(len(d) for d in docs)
    sft_chars = sum(len(m["content"]) for sft, _ in parts.values() for r in sft for m in r["messages"])
    train_ids = {p.index for p in train_people}
    info = {
        "config": cfg.model_dump(mode="json"),
        "counts": counts,
        "corpus_chars": corpus_chars,
        "sft_chars": sft_chars,
        "approx_tokens": {"corpus": corpus_chars // 4, "sft": sft_chars // 4},
        "people": [dict(p.to_dict(), split="train" if p.index in train_ids else "held_out") for p in population],
    }
    atomic_write_text(out / "world.json", json.dumps(info, indent=1) + "\n")
    return info
