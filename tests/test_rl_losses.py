"""Hand-worked checks of the RL math added for issue 10: k2/k3 KL estimators (and which KL they estimate), group
advantages (GRPO, RLOO, Dr. GRPO), per-token clipped surrogate, token aggregation, the adaptive KL controller,
token entropy. Numbers are computed in the comments."""

import math

import pytest
import torch

from mixtune.train.losses import (
    adaptive_kl_coef,
    aggregate_tokens,
    clipped_policy_tokens,
    group_advantages,
    kl_k1,
    kl_k2,
    kl_k3,
    token_entropy,
)

torch.set_num_threads(1)


def test_k2_k3_hand_worked():
    # token 0: π = 0.5, π_ref = 0.25 → r = π_ref/π = 0.5, log r = −0.693147
    #   k1 = 0.693147, k2 = ½·0.480453 = 0.240227, k3 = 0.5 − 1 + 0.693147 = 0.193147
    # token 1: π = 0.2, π_ref = 0.4 → r = 2, log r = 0.693147
    #   k1 = −0.693147 (negative: k1 alone is not a distance), k2 = 0.240227, k3 = 2 − 1 − 0.693147 = 0.306853
    logp = torch.log(torch.tensor([0.5, 0.2]))
    logp_ref = torch.log(torch.tensor([0.25, 0.4]))
    torch.testing.assert_close(kl_k1(logp, logp_ref), torch.tensor([0.693147, -0.693147]))
    torch.testing.assert_close(kl_k2(logp, logp_ref), torch.tensor([0.240227, 0.240227]))
    torch.testing.assert_close(kl_k3(logp, logp_ref), torch.tensor([0.193147, 0.306853]))


def test_estimators_estimate_kl_policy_to_reference():
    # π = [0.5, 0.3, 0.2], π_ref = [0.25, 0.4, 0.35], tokens drawn from π: the exact expectation Σ π(a) k(a).
    # KL(π‖π_ref) = 0.5 ln 2 + 0.3 ln 0.75 + 0.2 ln(0.2/0.35) = 0.346574 − 0.086305 − 0.111923 = 0.148346
    # KL(π_ref‖π) = 0.25 ln 0.5 + 0.4 ln(4/3) + 0.35 ln 1.75 = −0.173287 + 0.115073 + 0.195866 = 0.137652
    # E[k1] = E[k3] = 0.148346 (k3: Σ π_ref − 1 + KL); E[k2] = ½(0.5·0.480453 + 0.3·0.082761 + 0.2·0.313170)
    #   = 0.163844 (biased upward here)
    pi = torch.tensor([0.5, 0.3, 0.2])
    ref = torch.tensor([0.25, 0.4, 0.35])
    expect = {name: float((pi * f(pi.log(), ref.log())).sum()) for name, f in
              (("k1", kl_k1), ("k2", kl_k2), ("k3", kl_k3))}
    assert expect["k1"] == pytest.approx(0.148346, abs=1e-6)
    assert expect["k3"] == pytest.approx(0.148346, abs=1e-6)
    assert expect["k2"] == pytest.approx(0.163844, abs=1e-6)
    assert abs(expect["k3"] - 0.137652) > 0.01  # not the forward KL(π_ref‖π)
    assert (kl_k3(pi.log(), ref.log()) >= 0).all() and (kl_k2(pi.log(), ref.log()) >= 0).all()


def test_group_advantages_grpo_rloo_dr_grpo():
    # group 0: r = [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(4·0.25/3) = 0.577350
    #   GRPO: ±0.5 / (0.577350 + 1e-4) = ±0.865876
    #   RLOO: b_0 = (2 − 1)/3 = 1/3 → A_0 = 2/3; b_1 = 2/3 → A_1 = −2/3 (= 4/3 · (r − mean))
    #   Dr. GRPO (no std): ±0.5
    # group 1: all equal → 0 everywhere (no signal, no division by zero)
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    a = 0.865876
    torch.testing.assert_close(group_advantages(r), torch.tensor([[a, -a, -a, a], [0.0] * 4]))
    t = 2 / 3
    torch.testing.assert_close(group_advantages(r, "rloo", "none"), torch.tensor([[t, -t, -t, t], [0.0] * 4]))
    torch.testing.assert_close(group_advantages(r, scale="none"), torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4]))
    with pytest.raises(ValueError, match="valid"):
        group_advantages(r, "median")


def test_clipped_policy_tokens_hand_worked():
    # ρ = [1.5, 0.5, 1.1], A = [1, 1, −2], ε = 0.2:
    # t0: max(−1.5, −1.2) = −1.2 (clipped); t1: max(−0.5, −0.8) = −0.5; t2: max(2.2, 2.2) = 2.2 (not clipped)
    logp_new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    loss, clipped = clipped_policy_tokens(logp_new, torch.zeros(1, 3), torch.tensor([[1.0, 1.0, -2.0]]), 0.2)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -0.5, 2.2]]))
    assert clipped.tolist() == [[True, False, False]]


def test_aggregate_tokens_three_ways():
    # rows [1, 2, 3 | 0 masked] and [4 | 0, 0, 0 masked]
    # sequence_mean: (6/3 + 4/1) / 2 = 3; token_mean: 10 / 4 = 2.5; constant (max 4 tokens): 10 / (2·4) = 1.25
    values = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert aggregate_tokens(values, mask, "sequence_mean").item() == pytest.approx(3.0)
    assert aggregate_tokens(values, mask, "token_mean").item() == pytest.approx(2.5)
    assert aggregate_tokens(values, mask, "constant", max_tokens=4).item() == pytest.approx(1.25)
    with pytest.raises(ValueError, match="max_tokens"):
        aggregate_tokens(values, mask, "constant")


def test_adaptive_kl_coef_hand_worked():
    # KL 0.3 vs target 0.1: e = clip(2, ±0.2) = 0.2 → β = 0.1 (1 + 0.2·8/10000) = 0.100016
    # KL 0.09: e = −0.1 → β = 0.1 (1 − 0.1·8/10000) = 0.099992
    assert adaptive_kl_coef(0.1, 0.3, 0.1, 8, 10000) == pytest.approx(0.100016, abs=1e-12)
    assert adaptive_kl_coef(0.1, 0.09, 0.1, 8, 10000) == pytest.approx(0.099992, abs=1e-12)


def test_token_entropy_hand_worked():
    # [0, 0] → ln 2 = 0.693147; [0, ln 3] → p = [0.25, 0.75]: 0.25·1.386294 + 0.75·0.287682 = 0.562335
    out = token_entropy(torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]]))
    torch.testing.assert_close(out, torch.tensor([0.693147, 0.562335]))
