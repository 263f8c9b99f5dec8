"""Houlsby bottleneck adapters: identity at init, only adapters train, save/load round trip, parameter count."""

import copy

import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from mixtune.config import AdapterConfig
from mixtune.model.bottleneck import BottleneckAdapter, WithAdapter, apply_bottleneck, load_bottleneck, save_bottleneck

torch.set_num_threads(1)
CFG = AdapterConfig(type="bottleneck", bottleneck_size=8)
IDS = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(1))


def tiny_llama(hidden: int = 32, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
    )
    return LlamaForCausalLM(config).eval()


def perturb(model) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BottleneckAdapter):
                m.up.weight.normal_(0.0, 0.5)


def test_adapter_math():
    # x + up(act(down(x))) with down = I (2→2), relu, up = 2·I, no biases: x = [1, −1] → [1, −1] + [2, 0] = [3, −1]
    adapter = BottleneckAdapter(2, 2, act="relu")
    with torch.no_grad():
        adapter.down.weight.copy_(torch.eye(2))
        adapter.down.bias.zero_()
        adapter.up.weight.copy_(2 * torch.eye(2))
    torch.testing.assert_close(adapter(torch.tensor([1.0, -1.0])), torch.tensor([3.0, -1.0]))


def test_zero_init_equals_base_and_placement():
    base = tiny_llama()
    model = apply_bottleneck(copy.deepcopy(base), CFG)
    block = model.model.layers[0]
    assert isinstance(block.self_attn.o_proj, WithAdapter) and isinstance(block.mlp, WithAdapter)
    assert sum(isinstance(m, BottleneckAdapter) for m in model.modules()) == 2 * 2  # after attention and FFN
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, base(IDS).logits)


def test_only_adapters_get_gradients():
    model = apply_bottleneck(tiny_llama(), CFG).train()
    perturb(model)  # with up = 0 the gradient of `down` is exactly 0
    model(IDS).logits.float().logsumexp(-1).mean().backward()
    for name, p in model.named_parameters():
        if ".adapter." in name:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_save_load_round_trip(tmp_path):
    base = tiny_llama()
    fresh = copy.deepcopy(base)
    model = apply_bottleneck(base, CFG)
    perturb(model)
    save_bottleneck(model, tmp_path / "adapter")
    assert len(load_file(str(tmp_path / "adapter" / "bottleneck_model.safetensors"))) == 4 * 4  # 4 adapters × (W, b)²
    loaded = load_bottleneck(fresh, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)
        assert not torch.equal(loaded(IDS).logits, tiny_llama()(IDS).logits)


def test_parameter_count_hidden128_4layers():
    # One adapter with m = 32 on d = 128: down 128·32 + 32 = 4128, up 32·128 + 128 = 4224 → 8352;
    # 2 adapters per block × 4 blocks = 66816.
    model = apply_bottleneck(tiny_llama(128, 4), AdapterConfig(type="bottleneck", bottleneck_size=32))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 66816
