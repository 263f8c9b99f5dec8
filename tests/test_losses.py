"""Hand-worked checks of the pure losses in mixtune.train.losses (numbers computed in the comments)."""

import math

import pytest
import torch

from mixtune.train.losses import (
    chunked_target_token_ce,
    dpo_loss,
    gae,
    kl_k1,
    lbc_coefficients,
    lbc_importance,
    lbc_loss,
    linear_cross_entropy,
    masked_token_ce,
    masked_whiten,
    per_sequence_logps,
    ppo_policy_loss,
    ppo_value_loss,
    reward_pairwise_loss,
    soft_pairwise_loss,
    target_token_ce,
    token_weighted_mean,
)

torch.set_num_threads(1)


def test_masked_token_ce_shift_and_ignore():
    # Row 0: logits[0,0]=[0,0] predicts labels[0,1]=0 → ln 2; logits[0,1]=[ln3,0] predicts labels[0,2]=1:
    #        p = 1/4 → ln 4. Row 1: position 0 predicts -100 (ignored); logits[1,1]=[0,ln3] predicts 0 → ln 4.
    # The last position of each row predicts nothing (shift). Sum = ln2 + 2 ln4 = ln 32, 3 tokens.
    ln3 = math.log(3.0)
    logits = torch.tensor(
        [[[0.0, 0.0], [ln3, 0.0], [9.0, -9.0]], [[5.0, 0.0], [0.0, ln3], [9.0, -9.0]]]
    )  # (B=2, T=3, V=2)
    labels = torch.tensor([[1, 0, 1], [-100, -100, 0]])
    loss_sum, n = masked_token_ce(logits, labels)
    assert n.item() == 3
    assert loss_sum.item() == pytest.approx(math.log(32.0), abs=1e-6)


def test_target_token_ce_equals_masked_token_ce_in_value_and_gradient():
    # the SFT loss computes the output layer only at target positions; it must be the same loss as the full logits
    torch.manual_seed(0)
    hidden = torch.randn(2, 7, 16, requires_grad=True)  # (B, T, H)
    weight = torch.randn(50, 16, requires_grad=True)  # (V, H)
    bias = torch.randn(50, requires_grad=True)
    labels = torch.randint(0, 50, (2, 7))
    labels[0, :3] = -100  # a prompt
    labels[1, 5:] = -100  # padding
    labels[1, 2] = -100  # an example's first token in a packed row
    full, n_full = masked_token_ce(torch.nn.functional.linear(hidden, weight, bias), labels)
    grads_full = torch.autograd.grad(full, (hidden, weight, bias))
    part, n_part = target_token_ce(hidden, labels, weight, bias)
    grads_part = torch.autograd.grad(part, (hidden, weight, bias))
    assert n_full.item() == n_part.item() == 7
    assert part.item() == pytest.approx(full.item(), rel=1e-6)
    for a, b in zip(grads_full, grads_part):
        assert torch.allclose(a, b, atol=1e-6)
    assert grads_part[0][0, 3:].abs().sum() > 0 and grads_part[0][0, :2].abs().sum() == 0  # no target: no gradient


def ce_inputs(seed: int = 0, with_bias: bool = True):
    """hidden (2, 7, 5), head (11, 5) + bias, labels with prompt (-100) spans: 4 + 5 of the 2 × 6 shifted positions."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 7, 5, generator=gen, dtype=torch.float32).requires_grad_()
    weight = torch.randn(11, 5, generator=gen, dtype=torch.float32).requires_grad_()
    bias = torch.randn(11, generator=gen, dtype=torch.float32).requires_grad_() if with_bias else None
    labels = torch.randint(0, 11, (2, 7), generator=gen)
    labels[0, :3] = -100
    labels[1, [0, 4]] = -100
    return hidden, weight, bias, labels


def ce_value_and_grads(fn, hidden, weight, bias, labels):
    for t in (hidden, weight, bias):
        if t is not None:
            t.grad = None
    loss, n = fn(hidden, labels, weight, bias)
    (loss * 0.5).backward()  # a scaled loss, as the trainer's loss_sum / n_step_target_tokens
    return loss.detach(), n, [t.grad.clone() for t in (hidden, weight, bias) if t is not None]


def full_logits_ce(hidden, labels, weight, bias):
    return masked_token_ce(torch.nn.functional.linear(hidden, weight, bias), labels)


@pytest.mark.parametrize("fn", [target_token_ce, chunked_target_token_ce], ids=["target", "chunked"])
def test_target_position_ce_equals_masked_token_ce(fn):
    # The same sum and gradients as computing all (B, T, V) logits: the rows without a target contribute nothing.
    inputs = ce_inputs()
    want_loss, want_n, want_grads = ce_value_and_grads(full_logits_ce, *inputs)
    got_loss, got_n, got_grads = ce_value_and_grads(fn, *inputs)
    assert int(got_n) == int(want_n) == 9
    assert got_loss.item() == pytest.approx(want_loss.item(), rel=1e-6)  # fp32 sums: 1e-6 relative
    for got, want in zip(got_grads, want_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()
    assert inputs[0].grad[0, :2].abs().max() == 0  # positions whose next token is a prompt token get no gradient


def test_linear_cross_entropy_hand_worked():
    # h = [1, 0], W = [[ln 3, 0], [0, 0]]: logits [ln 3, 0], target 1 → p = 1/(3+1), loss ln 4.
    # dL/dlogits = softmax − onehot = [3/4, −3/4]; dL/dh = g W = [3/4 ln 3, 0]; dL/dW = gᵀ h = [[3/4, 0], [−3/4, 0]].
    ln3 = math.log(3.0)
    hidden = torch.tensor([[1.0, 0.0]], requires_grad=True)
    weight = torch.tensor([[ln3, 0.0], [0.0, 0.0]], requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, None, torch.tensor([1]))
    assert loss.item() == pytest.approx(math.log(4.0), abs=1e-6)
    (2 * loss).backward()  # backward scales the gradients stored in forward by the incoming 2
    assert torch.allclose(hidden.grad, torch.tensor([[1.5 * ln3, 0.0]]), atol=1e-6)
    assert torch.allclose(weight.grad, torch.tensor([[1.5, 0.0], [-1.5, 0.0]]), atol=1e-6)


def test_linear_cross_entropy_chunks_and_no_grad():
    hidden, weight, bias, labels = ce_inputs(1)
    rows, targets = hidden.reshape(-1, 5), labels.reshape(-1).clamp(min=0)
    whole = linear_cross_entropy(rows, weight, bias, targets, chunk=1000)
    for chunk in (1, 3, 5):  # chunk boundaries inside and at the end of the 14 rows
        assert linear_cross_entropy(rows, weight, bias, targets, chunk=chunk).item() == pytest.approx(
            whole.item(), rel=1e-6)
    with torch.no_grad():  # evaluation: the loss alone, no gradient work and no graph
        loss = linear_cross_entropy(rows, weight, bias, targets, chunk=3)
    assert loss.item() == pytest.approx(whole.item(), rel=1e-6) and not loss.requires_grad


def test_chunked_ce_under_bf16_autocast_matches_within_bf16_rounding():
    hidden, weight, _, labels = ce_inputs(2, with_bias=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, _, want_grads = ce_value_and_grads(target_token_ce, hidden, weight, None, labels)
        got, _, got_grads = ce_value_and_grads(chunked_target_token_ce, hidden, weight, None, labels)
    assert got.item() == pytest.approx(want.item(), rel=1e-2)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert g.dtype == torch.float32 and torch.allclose(g, w, atol=2e-2, rtol=2e-2)


def test_token_weighted_mean_weighs_tokens_not_batches():
    # (3 + 1) / (1 + 3) = 1.0, whereas the mean of per-batch means would be (3/1 + 1/3)/2 = 1.667.
    out = token_weighted_mean([torch.tensor(3.0), torch.tensor(1.0)], [torch.tensor(1), torch.tensor(3)])
    assert out.item() == pytest.approx(1.0)
    assert token_weighted_mean(torch.tensor(0.0), torch.tensor(0)).item() == 0.0


# ----------------------------------------------------------------------------------------------- LoRAMoE L_lbc
# 2 samples × 4 experts; sample 0 (type 1, knowledge) has tokens 0, 1; sample 1 (type 0) tokens 2, 3 and a pad 4.
GATES = torch.tensor(
    [
        [0.4, 0.3, 0.2, 0.1],
        [0.1, 0.2, 0.3, 0.4],  # Q0 = [0.5, 0.5, 0.5, 0.5]
        [0.7, 0.1, 0.1, 0.1],
        [0.5, 0.3, 0.1, 0.1],  # Q1 = [1.2, 0.4, 0.2, 0.2]
        [0.25, 0.25, 0.25, 0.25],  # padding: must not count
    ]
)
SAMPLE = torch.tensor([0, 0, 1, 1, 1])
MASK = torch.tensor([1, 1, 1, 1, 0])
TYPES = torch.tensor([1, 0])
# δ = 0.1, experts 0-1 are the knowledge group: I0 = [1.1, 1.1, 0.9, 0.9], I1 = [0.9, 0.9, 1.1, 1.1]
# Z = [0.55, 0.55, 0.45, 0.45, 1.08, 0.36, 0.22, 0.22], Σ = 3.88, mean = 0.485
# deviations 0.065 ×2, −0.035 ×2, 0.595, −0.125, −0.265 ×2 → Σ squares = 0.00845 + 0.00245 + 0.354025 + 0.015625
#   + 0.14045 = 0.521; unbiased Var = 0.521 / 7 = 0.0744286
CV2 = (0.521 / 7) / 0.485**2  # = 0.316414
VAR_MEAN = (0.521 / 7) / 0.485  # = 0.153461


def test_lbc_importance_and_coefficients():
    q = lbc_importance(GATES, SAMPLE, 2, MASK)
    torch.testing.assert_close(q, torch.tensor([[0.5, 0.5, 0.5, 0.5], [1.2, 0.4, 0.2, 0.2]]))
    coeff = lbc_coefficients(TYPES, 4, 0.1)
    torch.testing.assert_close(coeff, torch.tensor([[1.1, 1.1, 0.9, 0.9], [0.9, 0.9, 1.1, 1.1]]))


def test_lbc_loss_hand_worked_both_forms():
    assert CV2 == pytest.approx(0.316414, abs=1e-6)
    assert lbc_loss(GATES, SAMPLE, TYPES, 0.1, "cv2", MASK).item() == pytest.approx(CV2, rel=1e-5)
    assert lbc_loss(GATES, SAMPLE, TYPES, 0.1, "var_mean", MASK).item() == pytest.approx(VAR_MEAN, rel=1e-5)


def test_lbc_loss_padding_matters_and_negative_index_is_dropped():
    # Without the mask the pad adds 0.25 to every Q1 entry → a different value.
    unmasked = lbc_loss(GATES, SAMPLE, TYPES, 0.1, "cv2", None).item()
    assert unmasked != pytest.approx(CV2, rel=1e-3)
    # Packed-row convention: padding at the end of a row has sample index −1 and is dropped even without a mask.
    packed_index = torch.tensor([0, 0, 1, 1, -1])
    assert lbc_loss(GATES, packed_index, TYPES, 0.1, "cv2", None).item() == pytest.approx(CV2, rel=1e-5)


def test_lbc_loss_gradient_flows_to_gates():
    gates = GATES.clone().requires_grad_(True)
    lbc_loss(gates, SAMPLE, TYPES, 0.1, "cv2", MASK).backward()
    assert gates.grad[:4].abs().sum() > 0
    assert torch.equal(gates.grad[4], torch.zeros(4))  # the pad gets no gradient


# ------------------------------------------------------------------------------------------------ preference
def test_reward_pairwise_loss():
    # r_w − r_l = 1: −log σ(1) = log(1 + e^−1) = 0.3132617; with margin 1: −log σ(0) = ln 2.
    out = reward_pairwise_loss(torch.tensor([2.0]), torch.tensor([1.0]))
    assert out.item() == pytest.approx(0.3132617, abs=1e-6)
    out = reward_pairwise_loss(torch.tensor([2.0]), torch.tensor([1.0]), margin=1.0)
    assert out.item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_soft_pairwise_loss_hand_worked():
    # r_a − r_b = ln 3: σ = 3/4, σ(−ln 3) = 1/4. p = 0.8: −[0.8 ln 0.75 + 0.2 ln 0.25] = 0.8·0.2876821 + 0.2·1.3862944
    # = 0.2301457 + 0.2772589 = 0.5074046. p = 0.5 with r_a = r_b: −ln(1/2) = ln 2. p = 1 is the hard loss at
    # r_w − r_l = 1 (0.3132617); p = 0 is it with the roles swapped: −log σ(−1) = log(1 + e) = 1.3132617.
    r_a = torch.tensor([math.log(3.0), 0.0, 2.0, 2.0], requires_grad=True)
    r_b = torch.tensor([0.0, 0.0, 1.0, 1.0])
    out = soft_pairwise_loss(r_a, r_b, torch.tensor([0.8, 0.5, 1.0, 0.0]))
    assert out.tolist() == pytest.approx([0.5074046, math.log(2.0), 0.3132617, 1.3132617], abs=1e-6)
    # d/dr_a = σ(r_a − r_b) − p: 0.75 − 0.8 = −0.05, 0.5 − 0.5 = 0, σ(1) − 1 = −0.2689414, σ(1) = 0.7310586
    out.sum().backward()
    assert r_a.grad.tolist() == pytest.approx([-0.05, 0.0, -0.2689414, 0.7310586], abs=1e-6)


def test_per_sequence_logps_hand_worked():
    # three targets over two tokens: logits (0, 0) -> p = 1/2; (ln 3, 0) -> p(0) = 3/4; (0, ln 3) -> p(0) = 1/4.
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, math.log(3.0)]])
    targets = torch.tensor([1, 0, 0])
    sequence = torch.tensor([0, 1, 0])  # targets 0 and 2 belong to sequence 0, target 1 to sequence 1
    logps, counts = per_sequence_logps(logits, targets, sequence, n_sequences=3)
    # sequence 0: log(1/2) + log(1/4) = log(1/8) = −2.0794415; sequence 1: log(3/4) = −0.2876821; sequence 2: none
    assert logps.tolist() == pytest.approx([math.log(1 / 8), math.log(3 / 4), 0.0], abs=1e-6)
    assert counts.tolist() == [2, 1, 0]


def test_dpo_loss_forms():
    # chosen ratio −1 − (−2) = 1, rejected ratio −3 − (−2) = −1, h = 2; β = 0.5 → βh = 1.
    args = [torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0)]
    loss, r_w, r_l = dpo_loss(*args, beta=0.5)
    assert loss.item() == pytest.approx(0.3132617, abs=1e-6)  # −log σ(1)
    assert (r_w.item(), r_l.item()) == pytest.approx((0.5, -0.5))
    # label smoothing 0.1: 0.9 · 0.3132617 + 0.1 · log(1 + e) = 0.2819355 + 0.1313262 = 0.4132617
    loss, _, _ = dpo_loss(*args, beta=0.5, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.4132617, abs=1e-6)
    # IPO: (h − 1/(2β))² = (2 − 1)² = 1
    assert dpo_loss(*args, beta=0.5, ipo=True)[0].item() == pytest.approx(1.0)
    # hinge (SPIN): max(0, 1 − βh): β = 0.5 → 0; β = 0.25 → 0.5
    assert dpo_loss(*args, beta=0.5, hinge=True)[0].item() == pytest.approx(0.0)
    assert dpo_loss(*args, beta=0.25, hinge=True)[0].item() == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------------- PPO
def test_kl_k1():
    out = kl_k1(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0]))
    torch.testing.assert_close(out, torch.tensor([0.5, -1.0]))


def test_ppo_policy_loss_hand_worked():
    # ρ = [1.5, 0.5, 1.1, e^5], A = [1, 1, −2, 10], ε = 0.2, last token masked.
    # t0: max(−1.5, −1.2) = −1.2 (clipped); t1: max(−0.5, −0.8) = −0.5; t2: max(2.2, 2.2) = 2.2
    # loss = (−1.2 − 0.5 + 2.2) / 3 = 0.1666667; clip fraction = 1/3
    logp_old = torch.zeros(1, 4)
    logp_new = torch.log(torch.tensor([[1.5, 0.5, 1.1, math.exp(5.0)]]))
    adv = torch.tensor([[1.0, 1.0, -2.0, 10.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clip_frac = ppo_policy_loss(logp_new, logp_old, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.5 / 3, abs=1e-6)
    assert clip_frac.item() == pytest.approx(1 / 3)


def test_ppo_value_loss_hand_worked():
    # t0: v=1, v_old=0.5, R=2 → (v−R)² = 1; v_clip = 0.7 → 1.69; max 1.69. t1: v=v_old=2, R=1 → 1. t2 masked.
    # 0.5 · (1.69 + 1) / 2 = 0.6725
    values = torch.tensor([[1.0, 2.0, 100.0]])
    values_old = torch.tensor([[0.5, 2.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0]])
    loss = ppo_value_loss(values, values_old, returns, torch.tensor([[1, 1, 0]]), clip_eps_v=0.2)
    assert loss.item() == pytest.approx(0.6725, abs=1e-6)


def test_gae_hand_worked():
    # γ = 0.9, λ = 0.8, valid tokens 0..2 (token 3 masked, its value must not leak in).
    # t2: δ = 1 − 0.7 = 0.3 (V after the last token = 0), A2 = 0.3
    # t1: δ = 0.9·0.7 − 0.6 = 0.03, A1 = 0.03 + 0.72·0.3 = 0.246
    # t0: δ = 0.9·0.6 − 0.5 = 0.04, A0 = 0.04 + 0.72·0.246 = 0.21712
    rewards = torch.tensor([[0.0, 0.0, 1.0, 9.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 9.0]])
    adv, ret = gae(rewards, values, torch.tensor([[1, 1, 1, 0]]), gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.21712, 0.246, 0.3, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.71712, 0.846, 1.0, 0.0]]))


def test_masked_whiten():
    # valid [1, 2, 3]: mean 2, population var 2/3, std 0.8164966 → [−1.2247449, 0, 1.2247449]
    out = masked_whiten(torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([1, 1, 1, 0]))
    torch.testing.assert_close(out, torch.tensor([-1.2247449, 0.0, 1.2247449, 0.0]), atol=1e-5, rtol=0)
