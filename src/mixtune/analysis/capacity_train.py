"""One cell of the knowledge-capacity grid (Physics of LMs 3.3, METHODS §8): bioS(N) people, E exposures, junk mixed
in to a token share, a Llama trained from scratch on them, and the bits it stores (analysis/bits.py).

The training stream is built up front so the schedule knows its length: exposure e holds one biography per person,
re-drawn (templates and sentence order) from the seed and e, plus junk paragraphs (random words) until junk makes up
`junk_fraction` of the exposure's tokens; the exposure's documents are shuffled, each followed by the end-of-text
token, and the exposures concatenated and cut into rows of `train.seq_len` (the last partial row is dropped). Rows
are visited in order, so every person is seen once per exposure. The loop is pretrain's (engine + the same loss),
without its held-out split: every exposure is trained on, and the measurement is the bits, not an eval loss.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch

from mixtune.analysis.bits import capacity_bits, employer_city_bits, max_bits, role_sums, score_plan, token_losses
from mixtune.config import CapacityRun, ModelSize, Recipe
from mixtune.model.load import build_llama, count_parameters, load_tokenizer
from mixtune.train import engine
from mixtune.train.pretrain import lm_loss_sum
from mixtune.world import people, text


def cell_id(run: CapacityRun) -> str:
    """`<size>-n<N>-e<E>-j<junk>`, e.g. `s-n300-e100-j0.875`."""
    return f"{run.size}-n{run.n_people}-e{run.exposures}-j{run.junk_fraction:g}"


def population(n: int, seed: int) -> list[people.Person]:
    """The first n people of the analysis's bioS draw (a smaller N is a subset of a larger one)."""
    return people.make_people(n, seed, people.BIOS_POOLS)


def tokenizer_texts(n_people: int, seed: int, n_junk: int = 2000) -> list[str]:
    """Text to train the analysis's tokenizer on: three biographies of each person and some junk."""
    rng = random.Random(f"bios-tokenizer/{seed}")
    persons = population(n_people, seed)
    words = text.junk_words()
    return [people.bios_biography(p, rng).text for _ in range(3) for p in persons] + [
        text.junk_paragraph(rng, words) for _ in range(n_junk)]


def exposure_stream(persons: list[people.Person], exposures: int, junk_fraction: float, tokenizer, seed: int
                    ) -> tuple[torch.Tensor, dict[str, int]]:
    """The whole training stream (1-D token ids) and its token counts (bio, junk, documents)."""
    eos = tokenizer.eos_token_id
    words = text.junk_words()
    junk_rng = random.Random(f"bios-junk/{seed}")
    ratio = junk_fraction / (1.0 - junk_fraction)  # junk tokens per bio token
    ids: list[int] = []
    counts = {"bio_tokens": 0, "junk_tokens": 0, "documents": 0}
    for e in range(exposures):
        rng = random.Random(f"bios-exposure/{seed}/{e}")
        docs = tokenizer([people.bios_biography(p, rng).text for p in persons], add_special_tokens=False)["input_ids"]
        n_bio = sum(len(d) + 1 for d in docs)
        junk: list[list[int]] = []
        n_junk = 0
        while n_junk < ratio * n_bio:  # whole paragraphs, until the share is reached
            batch = [text.junk_paragraph(junk_rng, words) for _ in range(64)]
            for doc in tokenizer(batch, add_special_tokens=False)["input_ids"]:
                if n_junk >= ratio * n_bio:
                    break
                junk.append(doc)
                n_junk += len(doc) + 1
        order = docs + junk
        rng.shuffle(order)
        for doc in order:
            ids.extend(doc)
            ids.append(eos)
        counts["bio_tokens"] += n_bio
        counts["junk_tokens"] += n_junk
        counts["documents"] += len(order)
    return torch.tensor(ids, dtype=torch.long), counts


def counted_parameters(model, used_rows: int) -> dict[str, int]:
    """Parameter counts: all, without the embedding matrices, and the counted ones (METHODS §8: only the vocabulary
    rows the data uses, in the input embedding and in the output layer when it is not tied)."""
    _, total = count_parameters(model)
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == emb.data_ptr()
    matrices = emb.numel() + (0 if tied else head.numel())
    per_row = emb.shape[1] * (1 if tied else 2)
    return {"params_total": total, "params_non_embedding": total - matrices,
            "params_counted": total - matrices + used_rows * per_row, "used_vocab_rows": used_rows}


def build_model(recipe: Recipe, size: ModelSize, tokenizer, seed: int):
    cfg = recipe.model.model_copy(update=size.model_dump())
    return build_llama(cfg, tokenizer, seed=seed)


def measure_bits(model, tokenizer, persons: list[people.Person], eval_bios: int, seed: int) -> dict[str, float]:
    """Bits of `model` about `persons`: role sums averaged over `eval_bios` fresh biographies per person."""
    per_person = [{} for _ in persons]
    for k in range(eval_bios):
        rng = random.Random(f"bios-eval/{seed}/{k}")
        plans = score_plan(tokenizer, [people.bios_biography(p, rng) for p in persons])
        for acc, plan, losses in zip(per_person, plans, token_losses(model, plans, tokenizer.eos_token_id)):
            for role, v in role_sums(losses, plan.roles).items():
                acc[role] = acc.get(role, 0.0) + v / eval_bios
    pp = people.BIOS_POOLS
    result = capacity_bits(per_person, math.log2(pp.name_space()), pp.attribute_bits())
    result["max_bits"] = max_bits(len(persons), result["log2_n0"], result["log2_s0"])
    result["employer_city_bits"] = employer_city_bits([p.employer for p in persons], len(pp.cities))
    return result


def train_cell(recipe: Recipe, run: CapacityRun, tokenizer_dir: Path, folder: Path, log=print) -> dict:
    """Train one cell from scratch and measure it; returns a JSON-able record (numbers, curve, wall time).
    `folder` is the cell's folder (named in a divergence message)."""
    # ---- setup
    cfg, cap = recipe.train, recipe.analysis.capacity
    t0 = time.perf_counter()
    engine.setup_torch(cfg)
    tokenizer = load_tokenizer(tokenizer_dir)
    persons = population(run.n_people, cap.seed)
    stream, counts = exposure_stream(persons, run.exposures, run.junk_fraction, tokenizer, cap.seed)
    rows = stream[: len(stream) // cfg.seq_len * cfg.seq_len].view(-1, cfg.seq_len)  # (R, T)
    model = build_model(recipe, cap.sizes[run.size], tokenizer, seed=cap.seed)
    params = counted_parameters(model, used_rows=int(torch.unique(stream).numel()))
    total_steps = math.ceil(len(rows) / cfg.batch_size)
    optimizer = engine.make_optimizer(model, cfg)
    scheduler = engine.make_scheduler(optimizer, cfg, total_steps)
    speed = engine.Throughput()
    curve, window = [], []
    log(f"capacity {cell_id(run)}: {params['params_counted']:,} counted params, {len(rows)} rows x {cfg.seq_len}, "
        f"{total_steps} steps")
    # ---- loop
    model.train()
    for step in range(total_steps):
        speed.step_start()
        batch = rows[step * cfg.batch_size:(step + 1) * cfg.batch_size]  # (B, T)
        loss_sum, n = lm_loss_sum(model, batch, cfg)
        loss = loss_sum / n
        loss.backward()
        engine.check_finite(float(loss.detach()), step + 1, folder)
        engine.clip_and_step(model, optimizer, scheduler, cfg)
        speed.step_done(batch.numel())
        window.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == total_steps:
            curve.append((step + 1, sum(window) / len(window)))
            window = []
    # ---- measure
    bits = measure_bits(model, tokenizer, persons, cap.eval_bios, cap.seed)
    record = {"cell": cell_id(run), **run.model_dump(), **params, **counts, **bits, "steps": total_steps,
              "tokens": int(rows.numel()), "tokens_per_s": speed.overall_rate(), "final_train_loss": curve[-1][1],
              "bits_per_param": bits["bits"] / params["params_counted"],
              "memorised_fraction": bits["bits"] / bits["max_bits"], "wall_s": time.perf_counter() - t0,
              "curve": curve}
    log(f"capacity {cell_id(run)}: {bits['bits']:.0f} bits, R = {record['bits_per_param']:.3f} bits/param, "
        f"{record['memorised_fraction']:.2f} of the max, {record['wall_s']:.0f} s")
    return record
