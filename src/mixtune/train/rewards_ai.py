"""Direct RLAIF (Lee et al. 2023, arXiv 2309.00267; METHODS.md §6): no reward model, the AI labeller scores each response 1–10
and its expected score is the reward. A reward function for the RL stages (register `rlaif_score` or
`rlaif_rewards` beside the rewards of `train/rewards.py`).

    s = Σ_{i=1..10} i · P(i)    over the labeller's probabilities of the score tokens "1".."10" after "Score=",
                                renormalised over those ten
    reward = (s − 5.5) / 4.5   in [−1, 1]

"10" may be two tokens ("1" then "0") in the labeller's vocabulary. When the vocabulary (or the endpoint's top
log-probs) has a "10" token, P(10) is its probability and P(1) the "1" token's. Otherwise the labeller is asked once
more with the reply begun by "1": P(10) = P("1")·P("0" | "1") and P(1) = P("1")·(1 − P("0" | "1")). A local labeller
always answers that second question (one more forward pass); an endpoint only when its greedy first token was "1"
(its second reply position then holds P(· | "1")); when it was not, P("1") stays whole on score 1 (the endpoint
cannot be made to continue a reply; P(10) is then underestimated by at most P("1")·P("0" | "1")).
"""

from __future__ import annotations

from collections.abc import Sequence

from mixtune.evaluate.labeller import Labeller, fill, request_text

SCORE_PROMPT = """Rate how good the response to the request is, on a scale of 1 to 10: 10 is a response that is \
correct, helpful and follows every instruction of the request; 1 is a response that is wrong, unhelpful or ignores \
the request. Output the number only.

Request - {request}

Response - {response}

Score="""
"""The direct-RLAIF scoring prompt (the labeller's reply starts with the score)."""


def score_conversation(prompt: Sequence[dict], response: str) -> list[dict]:
    return [{"role": "user", "content": fill(SCORE_PROMPT, request=request_text(prompt), response=response)}]


def score_distribution(first: dict[str, float] | None, after_one: dict[str, float] | None
                       ) -> dict[int, float] | None:
    """P(i) for i = 1..10, renormalised over the ten (module docstring for "10"); None when all are 0."""
    if not first:
        return None
    p = {i: first.get(str(i), 0.0) for i in range(2, 10)}
    one = first.get("1", 0.0)
    if "10" in first:  # a "10" token: read directly
        p[1], p[10] = one, first["10"]
    elif after_one is not None:  # "1" then "0": split P("1") by the next token
        zero = after_one.get("0", 0.0)
        p[1], p[10] = one * (1.0 - zero), one * zero
    else:
        p[1], p[10] = one, 0.0
    total = sum(p.values())
    return {i: v / total for i, v in sorted(p.items())} if total > 0 else None


def expected_score(first: dict[str, float] | None, after_one: dict[str, float] | None) -> float | None:
    """s = Σ i·P(i) over the renormalised score distribution (None when it has no mass)."""
    dist = score_distribution(first, after_one)
    return None if dist is None else sum(i * q for i, q in dist.items())


def rlaif_rewards(labeller: Labeller, prompts: Sequence[list[dict]], responses: Sequence[str]
                  ) -> tuple[list[float | None], int]:
    """(reward (s − 5.5)/4.5 of each response to its prompt, None when the labeller gave no score token any
    probability; the number of such responses)."""
    conversations = [score_conversation(p, r) for p, r in zip(prompts, responses)]
    first = labeller.next_token_probs(conversations)
    need = [i for i, f in enumerate(first) if f and "10" not in f]  # "10" as "1" + "0": ask for the next token
    after = dict(zip(need, labeller.next_token_probs([conversations[i] for i in need], continuation="1")))
    scores = [expected_score(f, after.get(i)) for i, f in enumerate(first)]
    rewards = [None if s is None else (s - 5.5) / 4.5 for s in scores]
    return rewards, sum(r is None for r in rewards)


def rlaif_score(labeller: Labeller, prompt: list[dict], response: str) -> float:
    """The direct-RLAIF reward of one response in [−1, 1]; raises ValueError when the labeller gives no score token
    any probability (the caller decides what such a response earns, and counts it)."""
    (reward,), _ = rlaif_rewards(labeller, [prompt], [response])
    if reward is None:
        raise ValueError("the labeller gave no probability to any score token 1..10")
    return reward
