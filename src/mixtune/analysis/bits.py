"""Knowledge bits of a model trained on bioS(N) (Physics of LMs 3.3, METHODS §8): which tokens are scored, their
summed cross-entropy, and the bit-complexity lower bound.

Token selection, exactly:
- a biography is tokenised alone with the end-of-text token in front: the document start the model saw in
  training, where documents are separated by that token;
- a token is a *name token* when its character span overlaps the full name that opens the first sentence; its loss
  is −ln p(token | end-of-text, the name tokens before it): the name given nothing else;
- a token is a *value token* of attribute a when its span overlaps a's value, and of `gender` when it overlaps the
  subject pronoun of the second sentence (the first place the gender shows; the later pronouns repeat it, and their
  loss would charge the model for copying within the text and for not knowing whether the biography ends there, not
  for what it stores); its loss is −ln p(token | everything before it in the biography): the name, the earlier
  sentences and the template prefix of its own sentence;
- per person, p1 = Σ name-token losses and p2 = Σ value-token losses (nats, the six attributes and the gender).
Then bits = Σ_i (log2 N0 − p1_i / ln 2) + Σ_i (log2 S0 − p2_i / ln 2), i.e. METHODS §8's N·(…) with per-person means.
Split by attribute, log2 S0 = Σ_a log2 |pool_a| (work city 0 bits: the employer fixes it), so the value bits also
read per attribute. A model worse than uniform over a pool contributes negative bits: the bound is kept as is.

Finite N: S0 treats the work city as free given the employer, true when every employer is seen with many people
(the paper's N is in the millions). With N of a few hundred most employers belong to one person, and the table
employer → city is itself information the data carries: K·log2(#cities) bits for the K distinct employers of the
population (`employer_city_bits`). `bits` follows METHODS §8 exactly; the report shows the table's bits beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mixtune.world.people import Biography

NAME = "name"
GENDER = "gender"


def token_roles(offsets: Sequence[tuple[int, int]], bio: Biography) -> list[str | None]:
    """The role of each token (`name`, `gender`, an attribute, or None for template text), from the tokens'
    character offsets [start, end) into `bio.text`: a token belongs to a span it overlaps."""
    spans = [(NAME, bio.name_span)] + [(GENDER, s) for s in bio.pronoun_spans[:1]] + list(bio.value_spans.items())
    roles: list[str | None] = []
    for start, end in offsets:
        hit = [role for role, (s, e) in spans if start < e and end > s]
        if len(hit) > 1:
            raise ValueError(f"token [{start}, {end}) of {bio.text!r} overlaps two scored spans: {hit}")
        roles.append(hit[0] if hit else None)
    return roles


@dataclass(frozen=True)
class ScoredBio:
    """A tokenised biography (without the leading end-of-text token) and the role of each token."""

    ids: list[int]
    roles: list[str | None]


def score_plan(tokenizer, bios: Sequence[Biography]) -> list[ScoredBio]:
    """Tokenise `bios` (fast tokenizer offsets) and mark each token's role; every scored span must get a token."""
    enc = tokenizer([b.text for b in bios], add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for bio, ids, offsets in zip(bios, enc["input_ids"], enc["offset_mapping"]):
        roles = token_roles(offsets, bio)
        wanted = {NAME, *bio.value_spans} | ({GENDER} if bio.pronoun_spans else set())
        if missing := wanted - set(roles):
            raise ValueError(f"no token covers {sorted(missing)} in {bio.text!r}")
        out.append(ScoredBio(list(ids), roles))
    return out


@torch.no_grad()
def token_losses(model, plans: Sequence[ScoredBio], bos_id: int, batch_size: int = 64) -> list[torch.Tensor]:
    """Per biography, the cross-entropy (nats) of each token given <bos_id> and the tokens before it: shape (T_i,)."""
    model.eval()
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for start in range(0, len(plans), batch_size):
        chunk = plans[start:start + batch_size]
        width = 1 + max(len(p.ids) for p in chunk)
        rows = torch.full((len(chunk), width), bos_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(chunk):
            rows[i, 1:1 + len(p.ids)] = torch.tensor(p.ids)
            mask[i, :1 + len(p.ids)] = 1
        logits = model(input_ids=rows.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), rows[:, 1:].to(device),
                                               reduction="none")  # (B, T): loss of token t+1 given tokens 0..t
        out.extend(ce[i, :len(p.ids)].cpu() for i, p in enumerate(chunk))
    return out


def role_sums(losses: torch.Tensor, roles: Sequence[str | None]) -> dict[str, float]:
    """Σ loss per role (nats) for one biography; template tokens (role None) are left out."""
    sums: dict[str, float] = {}
    for loss, role in zip(losses.tolist(), roles):
        if role is not None:
            sums[role] = sums.get(role, 0.0) + loss
    return sums


def capacity_bits(per_person: Sequence[dict[str, float]], log2_n0: float, attribute_bits: dict[str, float]
                  ) -> dict[str, float]:
    """The bit-complexity lower bound from per-person role sums (nats). `attribute_bits`: log2 pool size per value
    role (gender included); their sum is log2 S0. Returns total `bits`, `name_bits`, `value_bits`, `p1`/`p2`
    (per-person means, nats) and `bits/<role>` for each value role."""
    n = len(per_person)
    ln2 = math.log(2)
    p1 = [p.get(NAME, 0.0) for p in per_person]
    p2 = [sum(v for k, v in p.items() if k != NAME) for p in per_person]
    log2_s0 = sum(attribute_bits.values())
    name_bits = sum(log2_n0 - x / ln2 for x in p1)
    value_bits = sum(log2_s0 - x / ln2 for x in p2)
    out = {"bits": name_bits + value_bits, "name_bits": name_bits, "value_bits": value_bits,
           "p1": sum(p1) / n, "p2": sum(p2) / n, "log2_n0": log2_n0, "log2_s0": log2_s0}
    for role, b in attribute_bits.items():
        out[f"bits/{role}"] = sum(b - p.get(role, 0.0) / ln2 for p in per_person)
    return out


def employer_city_bits(employers: Sequence[str], n_cities: int) -> float:
    """K·log2(#cities): the employer → work-city table of a population with K distinct employers."""
    return len(set(employers)) * math.log2(n_cities)


def max_bits(n_people: int, log2_n0: float, log2_s0: float) -> float:
    """Bits of a model that knows everything: p1 = ln N (uniform over the N names it knows), p2 = 0."""
    return n_people * (log2_n0 - math.log2(n_people) + log2_s0)
