"""LoRAMoE: identity at B = 0, only routers/experts train, L_lbc by hand through the model, save/load, counts."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from mixtune.config import AdapterConfig
from mixtune.model.loramoe import (
    LoRAMoELinear,
    apply_loramoe,
    load_loramoe,
    loramoe_batch,
    loramoe_layers,
    save_loramoe,
)
from mixtune.train.adapter_losses import loramoe_balance_loss

torch.set_num_threads(1)
CFG = AdapterConfig(type="loramoe", num_experts=4, r=2, alpha=8.0)


def tiny_llama(hidden: int = 32, layers: int = 2, intermediate: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def perturb_b(model) -> None:
    with torch.no_grad():
        for layer in loramoe_layers(model):
            layer.lora_B.normal_(0.0, 0.5)


IDS = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(1))


def test_linear_equals_explicit_expert_sum():
    # h = W0 x + (α/r) Σ_i g_i B_i A_i x, written as a loop over experts, against the batched two-matmul form.
    torch.manual_seed(0)
    layer = LoRAMoELinear(torch.nn.Linear(5, 3), num_experts=3, r=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 4, 5)
    g = torch.softmax(x @ layer.router.weight.t(), dim=-1)  # (2, 4, 3)
    expected = layer.base(x) + 2.0 * sum(
        g[..., i : i + 1] * (x @ layer.lora_A[i].t() @ layer.lora_B[i].t()) for i in range(3)
    )
    torch.testing.assert_close(layer(x), expected)


def test_zero_b_equals_base_exactly_and_only_ffn_wrapped():
    base = tiny_llama()
    model = apply_loramoe(copy.deepcopy(base), CFG)
    assert len(loramoe_layers(model)) == 2 * 3  # gate, up, down in each of 2 blocks
    assert isinstance(model.model.layers[0].mlp.down_proj, LoRAMoELinear)
    assert isinstance(model.model.layers[0].self_attn.q_proj, torch.nn.Linear)
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, base(IDS).logits)


def test_only_routers_and_experts_get_gradients():
    model = apply_loramoe(tiny_llama(), CFG).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".router.weight", ".lora_A", ".lora_B")) for n in trainable)
    perturb_b(model)  # with B = 0 the CE gradient of A and the router is exactly 0
    with loramoe_batch(model, task_type=torch.tensor([1, 0])):
        logits = model(IDS).logits
        loss = logits.float().logsumexp(-1).mean() + 0.1 * loramoe_balance_loss(model)
    loss.backward()
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


# Routers set to zero → every gate is 1/4. Sample 0 (type 1) has 3 real tokens, sample 1 (type 0) 2 real + 1 pad.
# Q0 = 0.75·1, Q1 = 0.5·1; δ = 0.1 → Z = [0.825, 0.825, 0.675, 0.675, 0.45, 0.45, 0.55, 0.55], mean = 5/8 = 0.625,
# Σ (z − 0.625)² = 2(0.04 + 0.0025 + 0.030625 + 0.005625) = 0.1575, unbiased Var = 0.1575 / 7 = 0.0225,
# CV² = 0.0225 / 0.390625 = 0.0576, Var/Mean = 0.0225 / 0.625 = 0.036; 6 LoRAMoE linears → ×6.
# Padding counted (official code): Q1 = 0.75 → Z = 0.75·[1.1,1.1,0.9,0.9,0.9,0.9,1.1,1.1], mean 0.75,
# Var = 8·0.075²/7 = 0.045/7, CV² = 0.08/7 = 0.0114286.
@pytest.mark.parametrize(
    ("form", "mask_padding", "per_layer"), [("cv2", True, 0.0576), ("var_mean", True, 0.036), ("cv2", False, 0.08 / 7)]
)
def test_balance_loss_hand_worked_through_model(form, mask_padding, per_layer):
    model = apply_loramoe(tiny_llama(), CFG)
    with torch.no_grad():
        for layer in loramoe_layers(model):
            layer.router.weight.zero_()
    ids = IDS[:, :3]
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with loramoe_batch(model, task_type=torch.tensor([1, 0]), token_mask=mask):
        model(ids, attention_mask=mask)
        assert loramoe_layers(model)[0].gates.shape == (6, 4)
        loss = loramoe_balance_loss(model, form=form, mask_padding=mask_padding)
    assert loss.item() == pytest.approx(6 * per_layer, rel=1e-5)
    # The same two samples packed in one row (pad at the end has sample index −1) give the same value when masked.
    if mask_padding:
        packed = torch.tensor([[0, 0, 0, 1, 1, -1]])
        with loramoe_batch(model, task_type=torch.tensor([1, 0]), sample_index=packed):
            model(IDS[:1], position_ids=torch.tensor([[0, 1, 2, 0, 1, 0]]), use_cache=False)
            assert loramoe_balance_loss(model, form=form).item() == pytest.approx(6 * per_layer, rel=1e-5)


def test_inference_keeps_no_gates_and_needs_no_task_type():
    model = apply_loramoe(tiny_llama(), CFG)
    perturb_b(model)
    out = model.generate(IDS[:1, :3], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)
    assert all(layer.gates is None for layer in loramoe_layers(model))
    with pytest.raises(RuntimeError, match="loramoe_batch"):
        loramoe_balance_loss(model)


def test_save_load_restores_logits(tmp_path):
    base = tiny_llama()
    fresh = copy.deepcopy(base)
    model = apply_loramoe(base, CFG)
    perturb_b(model)
    save_loramoe(model, tmp_path / "adapter")
    tensors = load_file(str(tmp_path / "adapter" / "loramoe_model.safetensors"))
    assert len(tensors) == 6 * 3  # router, A, B of 6 linears, nothing of the backbone
    assert json.loads((tmp_path / "adapter" / "loramoe_config.json").read_text())["num_experts"] == 4
    loaded = load_loramoe(fresh, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)
        assert not torch.equal(loaded(IDS).logits, tiny_llama()(IDS).logits)


def test_parameter_count_hidden128_4layers():
    # Per linear: router E·in + experts E·r·(in + out). E = 6, r = 4, d = 128, FFN width 344.
    # gate/up: 6·128 + 24·(128 + 344) = 768 + 11328 = 12096; down: 6·344 + 24·472 = 2064 + 11328 = 13392
    # per block 2·12096 + 13392 = 37584; 4 blocks = 150336.
    model = apply_loramoe(tiny_llama(128, 4, 344), AdapterConfig(type="loramoe", num_experts=6, r=4, alpha=32.0))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 150336
