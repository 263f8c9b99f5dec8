"""Losses and RL math as small pure tensor functions (no model, no config).

Each function states its shapes and the paper/equation it implements; tests/test_losses.py and
tests/test_rl_losses.py check every one against numbers worked out by hand. Ours, not a library's: TRL/OpenRLHF
bury these inside trainer methods.

Contents: token cross-entropy with masks (SFT / pre-training), the LoRAMoE localized balancing constraint
(METHODS.md §3), reward-model pairwise loss, per-sequence log-probs, DPO / IPO / hinge (SPIN), PPO clipped policy and
value losses, GAE, the k1 / k2 / k3 KL estimators, the adaptive KL coefficient, GRPO / RLOO / Dr. GRPO group
advantages, token aggregation and token entropy (METHODS.md §5–§7), knowledge-distillation divergences (forward /
reverse KL, generalised JSD with temperature) and the process reward model's step loss.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LBC_EPS = 1e-10
"""Added to the denominator of the balancing loss, as in the official LoRAMoE `cv_squared`."""


# ------------------------------------------------------------------------------------------------ cross-entropy
def masked_token_ce(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """Summed next-token cross-entropy and the number of predicted tokens.

    HF-style shift: logits[:, t] predicts labels[:, t + 1]. Labels equal to `ignore_index` (prompt tokens, padding,
    and in packed rows the first token of every example, Flan packing §4) carry no loss.
    logits (B, T, V), labels (B, T) → (loss_sum scalar fp32, n_tokens scalar int64).
    Return the sum, not the mean, so micro-batches and packed rows combine by `token_weighted_mean`.
    """
    shift_logits = logits[:, :-1, :]  # (B, T-1, V)
    shift_labels = labels[:, 1:]  # (B, T-1)
    loss_sum = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)).float(),
        shift_labels.reshape(-1),
        ignore_index=ignore_index,
        reduction="sum",
    )
    n_tokens = (shift_labels != ignore_index).sum()
    return loss_sum, n_tokens


def target_token_ce(hidden: Tensor, labels: Tensor, head_weight: Tensor, head_bias: Tensor | None = None,
                    ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """`masked_token_ce(F.linear(hidden, head_weight, head_bias), labels)` without the logits of positions that
    have no target: hidden (B, T, H) -> only the N target rows go through the output layer, (N, V) logits.

    With response-only labels about half the positions are prompt, and with a large vocabulary the output layer
    is most of a small model's compute, so this halves it (the same value, summed in fp32)."""
    shift = labels[:, 1:]  # (B, T-1): position t predicts token t+1
    mask = shift != ignore_index
    logits = F.linear(hidden[:, :-1][mask], head_weight, head_bias)  # (N, V)
    return F.cross_entropy(logits.float(), shift[mask], reduction="sum"), mask.sum()


LINEAR_CE_CHUNK = 512
"""Rows per chunk of `linear_cross_entropy`: a (512, V) fp32 logit block is 16 MiB at V = 8192, and fewer, larger
chunks measured faster than 128 or 256 (benchmarks/sft_throughput.py, lever `fused_ce`)."""


class _LinearCrossEntropy(torch.autograd.Function):
    """Σ_i CE(h_i W^T + b, y_i) with the gradients computed chunk by chunk in the forward pass.

    d/dlogits of a summed CE is softmax − onehot, so each chunk's logits are used for the loss and their gradient at
    once and then freed: no (N, V) logits, log-probs or gradient ever exist, and nothing is recomputed in backward
    (the "fused linear cross-entropy" of Liger-Kernel, Hsu et al. 2024 §3.1, written with torch ops). backward only
    scales the stored dL/dh, dL/dW, dL/db by the incoming scalar gradient.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk: int,
                dtype: torch.dtype, grad_enabled: bool) -> Tensor:
        # needs_input_grad says True under torch.no_grad too: evaluation must not pay for the gradients
        need_h, need_w, need_b = (grad_enabled and need for need in ctx.needs_input_grad[:3])
        w = weight.to(dtype)  # (V, H) matmul operands in `dtype` (bf16 under autocast), as F.linear would cast
        b = None if bias is None else bias.to(dtype)
        grad_h = torch.empty_like(hidden) if need_h else None  # (N, H)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk].to(dtype)  # (C, H)
            y = targets[start:start + chunk]  # (C,)
            logits = F.linear(h, w, b).float()  # (C, V) fp32, as masked_token_ce's logits.float()
            lse = torch.logsumexp(logits, dim=-1)  # (C,)
            loss += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            if not (need_h or need_w or need_b):
                continue
            grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            grad[torch.arange(len(y), device=y.device), y] -= 1.0  # − onehot
            if need_b:
                grad_b += grad.sum(0)
            grad = grad.to(dtype)
            if need_h:
                grad_h[start:start + chunk] = grad @ w  # (C, H)
            if need_w:
                grad_w += (grad.t() @ h).float()  # (V, H), summed over chunks in fp32
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.param_dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.param_dtypes
        return (None if grad_h is None else grad_h * grad_loss,
                None if grad_w is None else (grad_w * grad_loss).to(w_dtype),
                None if grad_b is None else (grad_b * grad_loss).to(b_dtype), None, None, None, None)


def linear_cross_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                         chunk: int = LINEAR_CE_CHUNK, dtype: torch.dtype | None = None) -> Tensor:
    """Summed CE of `F.linear(hidden, weight, bias)` against `targets`, chunk by chunk (see _LinearCrossEntropy).

    hidden (N, H), weight (V, H), bias (V,) or None, targets (N,) in [0, V) → scalar fp32. `dtype`: the matmul
    dtype (default: bf16 inside a CPU/GPU autocast region, else hidden's); the softmax runs in fp32 either way.
    Differs from the unchunked form only by rounding (dW is summed over chunks in fp32)."""
    if dtype is None:
        device_type = hidden.device.type
        autocast_on = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast_on else hidden.dtype
    with torch.autocast(hidden.device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk, dtype, torch.is_grad_enabled())


def chunked_target_token_ce(hidden: Tensor, labels: Tensor, head_weight: Tensor, head_bias: Tensor | None = None,
                            ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """`target_token_ce` through `linear_cross_entropy`: the same contract and value up to rounding, without the
    (N, V) logits in memory. hidden (B, T, H), labels (B, T) → (loss_sum scalar fp32, n_tokens scalar int64)."""
    shift = labels[:, 1:]  # (B, T-1): position t predicts token t+1
    mask = shift != ignore_index
    return linear_cross_entropy(hidden[:, :-1][mask], head_weight, head_bias, shift[mask]), mask.sum()


def token_weighted_mean(loss_sums: Tensor | list[Tensor], n_tokens: Tensor | list[Tensor]) -> Tensor:
    """Σ loss_sum / Σ n_tokens over micro-batches: every token weighs the same (0 when there are no tokens)."""
    total = torch.stack([torch.as_tensor(x) for x in loss_sums]).sum() if isinstance(loss_sums, list) else loss_sums
    count = torch.stack([torch.as_tensor(x) for x in n_tokens]).sum() if isinstance(n_tokens, list) else n_tokens
    return total / count.clamp(min=1)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over positions where mask is 1 (token-level mean over the whole batch)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x − mean) / std over valid positions (population variance), masked positions set to 0 (PPO advantages)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask.to(x.dtype)


# ------------------------------------------------------------------------------------- LoRAMoE balancing (§3)
def lbc_importance(gates: Tensor, sample_index: Tensor, num_samples: int, token_mask: Tensor | None = None) -> Tensor:
    """Q[m, n] = Σ_{tokens j of sample m} g_n(x_j): per-sample expert importance (LoRAMoE §3.2).

    gates (N, E) router probabilities; sample_index (N,) the sample each token belongs to (packed rows hold several
    samples; a negative index means "no sample", e.g. padding at the end of a packed row); token_mask (N,) 1 for real
    tokens, 0 for padding (None: every token counts, the official code's behaviour). → (M, E) with M = num_samples.
    """
    keep = sample_index >= 0  # (N,)
    if token_mask is not None:
        keep = keep & token_mask.bool()
    weights = gates * keep.unsqueeze(-1).to(gates.dtype)  # (N, E)
    index = sample_index.clamp(min=0).long()  # masked rows add zeros, any valid slot will do
    importance = gates.new_zeros(num_samples, gates.size(-1))  # (M, E)
    return importance.index_add(0, index, weights)


def lbc_coefficients(task_type: Tensor, num_experts: int, delta: float) -> Tensor:
    """I[m, n] = 1 + δ if expert n's group matches the type of sample m, else 1 − δ (LoRAMoE §3.2).

    The first E // 2 experts form the world-knowledge group (type 1), the rest the downstream group (type 0), as in
    the official code (`lora_num // 2`; for odd E the extra expert joins the downstream group). task_type (M,) → (M, E).
    """
    knowledge_expert = torch.arange(num_experts, device=task_type.device) < num_experts // 2  # (E,)
    knowledge_sample = (task_type == 1).unsqueeze(-1)  # (M, 1)
    match = knowledge_expert.unsqueeze(0) == knowledge_sample  # (M, E)
    return torch.where(match, 1.0 + delta, 1.0 - delta)


def lbc_from_importance(
    importance: Tensor, task_type: Tensor, delta: float, form: Literal["cv2", "var_mean"] = "cv2"
) -> Tensor:
    """L_lbc from per-sample importance Q (M, E): Z = I ∘ Q flattened, then Var(Z)/Mean(Z)² or Var(Z)/Mean(Z).

    Var is the unbiased sample variance (÷(n−1)), because the official code calls `Tensor.var()` with its default
    correction=1; ε = 1e-10 is added to the denominator as there. A single element gives 0 (as the official code).
    `cv2` is the official code's squared coefficient of variation (default); `var_mean` the paper's printed formula.
    """
    coeff = lbc_coefficients(task_type, importance.size(-1), delta).to(importance.dtype)  # (M, E)
    z = (coeff * importance).flatten().float()  # (M·E,)
    if z.numel() < 2:
        return z.new_zeros(())
    var, mean = z.var(), z.mean()
    if form == "cv2":
        return var / (mean**2 + LBC_EPS)
    if form == "var_mean":
        return var / (mean + LBC_EPS)
    raise ValueError(f"unknown lbc form {form!r}; valid: ['cv2', 'var_mean']")


def lbc_loss(
    gates: Tensor,
    sample_index: Tensor,
    task_type: Tensor,
    delta: float,
    form: Literal["cv2", "var_mean"] = "cv2",
    token_mask: Tensor | None = None,
) -> Tensor:
    """Localized balancing constraint of one LoRAMoE linear (LoRAMoE eq. 6–8; METHODS.md §3).

    gates (N, E) fp32 router probabilities of N tokens; sample_index (N,) → index into task_type (M,) (1 world
    knowledge, 0 other); token_mask (N,) masks padding. Returns a scalar; the total loss adds β · Σ_layers of it.
    """
    importance = lbc_importance(gates, sample_index, task_type.numel(), token_mask)  # (M, E)
    return lbc_from_importance(importance, task_type, delta, form)


# ------------------------------------------------------------------------------------------ reward model (§5)
def reward_pairwise_loss(r_chosen: Tensor, r_rejected: Tensor, margin: float | Tensor = 0.0) -> Tensor:
    """−log σ(r_w − r_l − m) per pair (InstructGPT eq. 1, optional margin as Llama-2). (P,) → (P,).

    Per-pair losses: the caller weights them (1/C(K,2) for K ranked answers of one prompt) and averages.
    """
    return -F.logsigmoid(r_chosen - r_rejected - margin)


def soft_pairwise_loss(r_a: Tensor, r_b: Tensor, p: Tensor) -> Tensor:
    """−[p log σ(r_a − r_b) + (1 − p) log σ(r_b − r_a)] per pair: the cross-entropy between a soft preference
    p = P(a preferred over b) and the reward model's Bradley–Terry probability σ(r_a − r_b) (RLAIF, Lee et al. 2023
    arXiv 2309.00267; p = 1 is `reward_pairwise_loss` without margin). (P,) each → (P,)."""
    diff = r_a - r_b
    return -(p * F.logsigmoid(diff) + (1.0 - p) * F.logsigmoid(-diff))


# ---------------------------------------------------------------------------------------------- DPO & co (§6)
def per_sequence_logps(logits: Tensor, targets: Tensor, sequence: Tensor, n_sequences: int) -> tuple[Tensor, Tensor]:
    """Σ_t log p(target_t) per sequence, and each sequence's number of targets: log π(y|x) of DPO (Rafailov et al.
    2023 eq. 7), a sum over the answer's tokens.

    logits (N, V) at the N target positions of a batch (packed or padded rows, in any order), targets (N,),
    sequence (N,) the index in [0, S) of the sequence each target belongs to → (logps (S,) fp32, counts (S,) int64).
    A sequence without targets gets 0 and count 0."""
    token_logps = -F.cross_entropy(logits.float(), targets, reduction="none")  # (N,)
    logps = token_logps.new_zeros(n_sequences).index_add(0, sequence, token_logps)  # (S,)
    counts = torch.zeros(n_sequences, dtype=torch.long, device=targets.device)
    counts.index_add_(0, sequence, torch.ones_like(sequence))
    return logps, counts


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    ipo: bool = False,
    hinge: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO (Rafailov et al. 2023 eq. 7), its conservative label-smoothed form, IPO, or the hinge form (SPIN).

    Inputs (B,) sequence log-probs (sums over completion tokens; for IPO the caller may pass per-token means).
    h = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)];
    sigmoid: −(1−ε) log σ(βh) − ε log σ(−βh);  IPO: (h − 1/(2β))²;  hinge: max(0, 1 − βh).
    Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)); implicit rewards β(log π − log π_ref), detached.
    """
    if ipo and hinge:
        raise ValueError("choose at most one of ipo / hinge")
    chosen_logratio = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratio = policy_rejected_logps - ref_rejected_logps  # (B,)
    h = chosen_logratio - rejected_logratio  # (B,)
    if ipo:
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    elif hinge:
        losses = torch.relu(1.0 - beta * h)
    else:
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return losses, beta * chosen_logratio.detach(), beta * rejected_logratio.detach()


# --------------------------------------------------------------------------------------------------- PPO (§5)
def kl_k1(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """Per-token k1 estimator of KL(π‖π_ref): log π(a_t) − log π_ref(a_t) (InstructGPT eq. 2). Shapes kept."""
    return logp - logp_ref


def ppo_policy_loss(
    logp_new: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float = 0.2
) -> tuple[Tensor, Tensor]:
    """Clipped surrogate (Schulman et al. 2017 eq. 7): mean_t max(−A ρ, −A clip(ρ, 1−ε, 1+ε)), ρ = e^{new − old}.

    All inputs (B, T); the mean runs over valid tokens of the whole batch. Returns (loss, clip_fraction).
    """
    ratio = torch.exp(logp_new - logp_old)  # (B, T)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction.detach()


def ppo_value_loss(values: Tensor, values_old: Tensor, returns: Tensor, mask: Tensor, clip_eps_v: float) -> Tensor:
    """Clipped value loss: 0.5 mean_t max((v − R)², (v_clip − R)²), v_clip = v_old + clip(v − v_old, ±ε_v). (B, T)."""
    values_clipped = values_old + (values - values_old).clamp(-clip_eps_v, clip_eps_v)  # (B, T)
    loss = torch.maximum((values - returns) ** 2, (values_clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)


@torch.no_grad()
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016 eq. 16) over response tokens.

    rewards, values, mask (B, T); valid tokens of a row are contiguous and V after the last valid token is 0.
    δ_t = r_t + γ V_{t+1} − V_t,  A_t = δ_t + γλ A_{t+1},  returns = A + V. → (advantages, returns), both (B, T),
    0 at masked positions; not whitened (see `masked_whiten`).
    """
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)  # (B, T)
    last = torch.zeros_like(values[:, 0])  # (B,)
    T = values.size(1)
    for t in reversed(range(T)):
        next_mask = mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        next_value = values[:, t + 1] * next_mask if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * next_mask * last
        advantages[:, t] = last * mask[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


# ------------------------------------------------------------------------------------ knowledge distillation
def kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p‖q) = Σ_v p_v (log p_v − log q_v) per row, from log-probabilities (N, V) → (N,) fp32.

    A vocabulary entry with p_v = 0 adds 0 (0·log 0 = 0), even where log q_v is −inf."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(-1)


def distill_divergence(student_logits: Tensor, teacher_logits: Tensor, loss: str, temperature: float = 1.0,
                       beta: float = 0.5) -> Tensor:
    """Per-token distillation loss τ²·D(p_T, p_S) with p = softmax(logits / τ); (N, V) each → (N,) fp32.

    loss: `forward_kl` KL(p_T‖p_S) (Hinton et al. 2015: mean-seeking, the student covers the teacher's mass);
    `reverse_kl` KL(p_S‖p_T) (mode-seeking, MiniLLM, Gu et al. 2024); `jsd` the generalised Jensen-Shannon
    divergence of GKD (Agarwal et al. 2024, eq. 3): β KL(p_T‖m) + (1 − β) KL(p_S‖m) with m = β p_T + (1 − β) p_S,
    0 < β < 1; JSD(β)/β → KL(p_T‖p_S) as β → 0 and JSD(β)/(1 − β) → KL(p_S‖p_T) as β → 1.
    The τ² factor keeps the soft-target gradients' scale independent of τ (Hinton et al. §2: they scale as 1/τ²).
    The teacher's logits get no gradient (they are detached here).
    """
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (N, V)
    log_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)  # (N, V)
    if loss == "forward_kl":
        div = kl_rows(log_t, log_s)
    elif loss == "reverse_kl":
        div = kl_rows(log_s, log_t)
    elif loss == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd needs 0 < beta < 1, got {beta} (beta 0 / 1 are forward_kl / reverse_kl)")
        log_m = torch.logsumexp(torch.stack([log_t + math.log(beta), log_s + math.log(1.0 - beta)]), dim=0)
        div = beta * kl_rows(log_t, log_m) + (1.0 - beta) * kl_rows(log_s, log_m)
    else:
        raise ValueError(f"unknown distillation loss {loss!r}; valid: {', '.join(DISTILL_LOSSES)}")
    return temperature**2 * div


DISTILL_LOSSES = ("forward_kl", "reverse_kl", "jsd")
"""The divergences `distill_divergence` implements."""


# -------------------------------------------------------------------------------------- process reward model
def step_bce_loss(step_logits: Tensor, step_labels: Tensor) -> Tensor:
    """Summed binary cross-entropy of step scores (process reward model, Lightman et al. 2023 §2.3 with binary
    labels): step_logits (S,) the head's output at each step's last token, step_labels (S,) 1 correct / 0 wrong
    → scalar sum (the caller divides by the step's number of steps)."""
    return F.binary_cross_entropy_with_logits(step_logits.float(), step_labels.float(), reduction="sum")


# ------------------------------------------------------------------------------ KL estimators, GRPO, RLOO (§5, §7)
# Schulman, "Approximating KL divergence" (2020): for tokens a ~ π and r = π_ref(a) / π(a), each of
#   k1 = −log r,   k2 = ½ (log r)²,   k3 = (r − 1) − log r
# estimates KL(π ‖ π_ref) = E_π[log π − log π_ref] (the "reverse" KL the RL objective penalises). k1 is unbiased
# but negative for some tokens (high variance); k2 is biased (exact to second order in log r) and ≥ 0; k3 is
# unbiased (E_π[r] = 1) and ≥ 0 (x − 1 ≥ log x). GRPO (Shao et al. 2024, eq. 4) adds β·k3 to its loss.
def kl_k2(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """Per-token k2 = ½ (log π_ref(a) − log π(a))², an estimate of KL(π‖π_ref) for a ~ π (biased, ≥ 0)."""
    return 0.5 * (logp_ref - logp) ** 2


def kl_k3(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """Per-token k3 = r − 1 − log r with r = π_ref(a) / π(a): an unbiased, non-negative estimate of KL(π‖π_ref)
    for a ~ π (GRPO eq. 4). Shapes kept."""
    log_ratio = logp_ref - logp
    return torch.exp(log_ratio) - 1.0 - log_ratio


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
"""name -> per-token estimator f(logp, logp_ref) of KL(π‖π_ref)."""


def group_advantages(rewards: Tensor, baseline: Literal["group_mean", "rloo"] = "group_mean",
                     scale: Literal["group", "none"] = "group", eps: float = 1e-4) -> Tensor:
    """One advantage per sample from rewards (G, N): G prompts × N samples each.

    baseline group_mean (GRPO, Shao et al. 2024 §4.1.2): b = mean of the group; rloo (Ahmadian et al. 2024, eq. 6):
    b_i = mean of the *other* N − 1 samples, i.e. A_i = N/(N−1) · (r_i − mean). scale group: divide by the
    group's standard deviation (unbiased, + eps, as TRL); none: Dr. GRPO (Liu et al. 2025) keeps the raw difference.
    """
    n = rewards.size(1)
    if baseline == "group_mean":
        base = rewards.mean(dim=1, keepdim=True)
    elif baseline == "rloo":
        if n < 2:
            raise ValueError("the rloo baseline needs at least 2 samples per prompt")
        base = (rewards.sum(dim=1, keepdim=True) - rewards) / (n - 1)
    else:
        raise ValueError(f"unknown baseline {baseline!r}; valid: ['group_mean', 'rloo']")
    advantages = rewards - base  # (G, N)
    if scale == "group":
        std = rewards.std(dim=1, keepdim=True) if n > 1 else torch.zeros_like(base)
        return advantages / (std + eps)
    if scale == "none":
        return advantages
    raise ValueError(f"unknown reward scaling {scale!r}; valid: ['group', 'none']")


def clipped_policy_tokens(logp_new: Tensor, logp_old: Tensor, advantages: Tensor,
                          clip_eps: float = 0.2) -> tuple[Tensor, Tensor]:
    """Per-token clipped surrogate max(−A ρ, −A clip(ρ, 1 ± ε)), ρ = e^{new − old} (Schulman et al. 2017 eq. 7),
    and whether the clipped term was taken. (B, T) → ((B, T) loss, (B, T) bool); aggregate with `aggregate_tokens`."""
    ratio = torch.exp(logp_new - logp_old)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def aggregate_tokens(values: Tensor, mask: Tensor, how: Literal["sequence_mean", "token_mean", "constant"],
                     max_tokens: int | None = None) -> Tensor:
    """A per-token loss (B, T) reduced to a scalar over the tokens where mask is 1.

    sequence_mean (GRPO eq. 3): each sequence's token mean, then the mean over sequences (a long answer's tokens
    weigh less); token_mean (DAPO, Yu et al. 2025): one mean over every token of the batch; constant (Dr. GRPO): the
    token sum divided by B · max_tokens, a normaliser that does not depend on the answers' lengths. A sequence with
    no valid token counts as 0 in sequence_mean."""
    mask = mask.to(values.dtype)
    if how == "sequence_mean":
        per_row = (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return per_row.mean()
    if how == "token_mean":
        return masked_mean(values, mask)
    if how == "constant":
        if not max_tokens:
            raise ValueError("constant aggregation needs max_tokens (the generation budget)")
        return (values * mask).sum() / (values.size(0) * max_tokens)
    raise ValueError(f"unknown aggregation {how!r}; valid: ['sequence_mean', 'token_mean', 'constant']")


def adaptive_kl_coef(beta: float, kl: float, target: float, n_samples: int, horizon: int) -> float:
    """Ziegler et al. 2019's proportional controller (METHODS.md §5): e = clip(KL/KL_target − 1, −0.2, 0.2),
    β ← β (1 + e · n / horizon), n = samples in the batch just seen."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * n_samples / horizon)


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy −Σ_v p log p of each row's distribution, logits (..., V) → (...) in fp32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
