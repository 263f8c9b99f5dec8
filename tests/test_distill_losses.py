"""Hand-worked checks of the distillation divergences and the PRM step loss (mixtune.train.losses)."""

import math

import pytest
import torch

from mixtune.train.losses import distill_divergence, kl_rows, step_bce_loss

LN3 = math.log(3.0)
TEACHER = torch.tensor([[0.0, 0.0]])  # p_T = [1/2, 1/2]
STUDENT = torch.tensor([[0.0, LN3]])  # p_S = [1/4, 3/4]


def test_kl_rows_on_two_tiny_distributions():
    # KL(p‖q), p = [1/2, 1/2], q = [1/4, 3/4]: ½ ln(½ / ¼) + ½ ln(½ / ¾) = ½ ln 2 + ½ ln(2/3) = ½ ln(4/3)
    # KL(q‖p) = ¼ ln(¼ / ½) + ¾ ln(¾ / ½) = −¼ ln 2 + ¾ ln(3/2)
    log_p, log_q = torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.25, 0.75]]))
    assert kl_rows(log_p, log_q).item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    assert kl_rows(log_q, log_p).item() == pytest.approx(-0.25 * math.log(2) + 0.75 * math.log(1.5), abs=1e-6)
    assert kl_rows(log_p, log_p).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_rows_zero_probability_adds_nothing():
    # p = [1, 0]: KL(p‖[½, ½]) = 1·ln(1/½) + 0 = ln 2, even though log p_1 = −inf
    log_p = torch.log_softmax(torch.tensor([[0.0, -float("inf")]]), dim=-1)
    assert kl_rows(log_p, torch.log(torch.tensor([[0.5, 0.5]]))).item() == pytest.approx(math.log(2), abs=1e-6)


def test_forward_and_reverse_kl_directions():
    fwd = distill_divergence(STUDENT, TEACHER, "forward_kl")  # KL(p_T‖p_S) = ½ ln(4/3)
    rev = distill_divergence(STUDENT, TEACHER, "reverse_kl")  # KL(p_S‖p_T) = −¼ ln 2 + ¾ ln(3/2)
    assert fwd.shape == (1,)
    assert fwd.item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    assert rev.item() == pytest.approx(-0.25 * math.log(2) + 0.75 * math.log(1.5), abs=1e-6)


def test_temperature_softens_and_scales_by_tau_squared():
    # τ = 2: student logits [0, 2 ln 3] / 2 = [0, ln 3] → p_S = [¼, ¾]; loss = τ² · ½ ln(4/3) = 2 ln(4/3)
    student = torch.tensor([[0.0, 2 * LN3]], requires_grad=True)
    loss = distill_divergence(student, TEACHER, "forward_kl", temperature=2.0)
    assert loss.item() == pytest.approx(2 * math.log(4 / 3), abs=1e-6)
    # Hinton eq. 2 with the τ² factor: ∂/∂z = τ²·(1/τ)(q − p) = τ (q − p) = 2([¼, ¾] − [½, ½]) = [−½, ½]
    (grad,) = torch.autograd.grad(loss.sum(), student)
    assert grad[0].tolist() == pytest.approx([-0.5, 0.5], abs=1e-6)


def test_high_temperature_gradient_matches_logit_matching():
    # Hinton §2.1: for zero-mean logits and τ → ∞, τ²·∂KL/∂z_i → (z_i − v_i) / N (N = 3 classes)
    z = torch.tensor([[1.0, -1.0, 0.0]], requires_grad=True)
    v = torch.tensor([[0.5, 0.5, -1.0]])
    (grad,) = torch.autograd.grad(distill_divergence(z, v, "forward_kl", temperature=200.0).sum(), z)
    assert grad[0].tolist() == pytest.approx([0.5 / 3, -1.5 / 3, 1.0 / 3], abs=2e-3)


def test_jsd_half_by_hand_and_symmetric():
    # β = ½: m = [3/8, 5/8]; KL(p_T‖m) = ½ ln(4/3) + ½ ln(4/5); KL(p_S‖m) = ¼ ln(2/3) + ¾ ln(6/5)
    expected = 0.5 * (0.5 * math.log(4 / 3) + 0.5 * math.log(4 / 5)) + 0.5 * (0.25 * math.log(2 / 3)
                                                                              + 0.75 * math.log(6 / 5))
    assert expected == pytest.approx(0.016135 + 0.017688, abs=1e-5)  # ½·0.032270 + ½·0.035376
    assert distill_divergence(STUDENT, TEACHER, "jsd", beta=0.5).item() == pytest.approx(expected, abs=1e-6)
    assert distill_divergence(TEACHER, STUDENT, "jsd", beta=0.5).item() == pytest.approx(expected, abs=1e-6)
    assert expected < math.log(2)  # JSD(½) ≤ ln 2


def test_jsd_limits_are_forward_and_reverse_kl():
    fwd = 0.5 * math.log(4 / 3)
    rev = -0.25 * math.log(2) + 0.75 * math.log(1.5)
    for eps in (1e-2, 1e-3):  # the error shrinks like O(β) (smaller β drowns in fp32 rounding of a ~1e-5 loss)
        small = distill_divergence(STUDENT, TEACHER, "jsd", beta=eps).item() / eps
        large = distill_divergence(STUDENT, TEACHER, "jsd", beta=1 - eps).item() / eps
        assert small == pytest.approx(fwd, rel=2 * eps)
        assert large == pytest.approx(rev, rel=2 * eps)
    with pytest.raises(ValueError, match="0 < beta < 1"):
        distill_divergence(STUDENT, TEACHER, "jsd", beta=0.0)


def test_teacher_gets_no_gradient_and_unknown_loss_is_named():
    teacher = TEACHER.clone().requires_grad_(True)
    student = STUDENT.clone().requires_grad_(True)
    distill_divergence(student, teacher, "reverse_kl").sum().backward()
    assert teacher.grad is None and student.grad is not None
    with pytest.raises(ValueError, match="forward_kl, reverse_kl, jsd"):
        distill_divergence(STUDENT, TEACHER, "kl")


def test_step_bce_loss_hand_worked():
    # steps scored [0, ln 3] → σ = [½, ¾]; labels [1, 0]: −ln ½ − ln(1 − ¾) = ln 2 + ln 4 = ln 8
    assert step_bce_loss(torch.tensor([0.0, LN3]), torch.tensor([1, 0])).item() == pytest.approx(math.log(8),
                                                                                                 abs=1e-6)
