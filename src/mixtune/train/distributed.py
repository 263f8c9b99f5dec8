"""Several processes, one training: the process group, the model wrapper and the few collectives a stage loop needs.

`torchrun --nproc_per_node N -m mixtune train -c R` and `accelerate launch --num_processes N -m mixtune train -c R`
start N copies of the command with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set; `dist_setup()`
joins them (nccl on GPU, gloo on CPU) and returns this process's `Distributed`. Without WORLD_SIZE it is the same
object with world_size 1 and every helper is a no-op, so a loop has one code path.

The engines are torch's and DeepSpeed's: DistributedDataParallel (`train.distributed: ddp`, the default), FSDP2
`fully_shard` (`fsdp`: parameters, gradients and optimizer state sharded; each decoder layer is one unit, the rest the
root unit) and DeepSpeed ZeRO stage 1, 2 or 3 (`deepspeed`, `train.zero_stage`). accelerate's launcher is honoured: a
config with `distributed_type: FSDP` selects fsdp, with its reshard, offload and layer-class settings; one with
`distributed_type: DEEPSPEED` selects deepspeed with its zero_stage and offload devices. accelerate's own FSDP plugin
is not used (it falls back to DDP on CPU, where the tests run). Under DeepSpeed the engine owns the step: the loop's
`loss.backward()` accumulates (DeepSpeed's torch-style backward, unmanaged accumulation: every optimizer step is the
boundary), `engine.clip_and_step` calls the engine's step (ZeRO's reduce, clip, AdamW, gather), and the optimizer a
loop holds is a `ZeroOptimizer` whose state is every rank's ZeRO partition (a checkpoint resumes on as many ranks).

The contract of a stage loop (sft.py, pretrain.py; the preference and RL stages use the same helpers):
- `train.batch_size` is per process: a step draws `batch_size * world_size` examples from the epoch permutation and
  each rank trains its round-robin share (`shard`), so every example is seen once per epoch across ranks;
- the model runs through `forward = dist.wrap(model)`: `forward(fn, *args)` calls `fn(model, *args)` inside the
  DDP / FSDP wrapper, so a loss function that reaches into submodules (hidden states, the output layer's weight)
  still synchronises gradients (DDP) and finds its parameters gathered (FSDP);
- losses are token-weighted globally: all-reduce the step's target count and scale each rank's summed loss by
  world_size / global count (DDP and FSDP average gradients over ranks), so the gradients are those of one process
  with the whole batch; the logged loss is all-reduced too;
- every rank runs as many forward/backward passes as the others (`micro_batches` pads a short share with weight-0
  repeats): FSDP gathers parameters in every forward, DDP reduces gradients in every backward;
- rank 0 alone writes (checkpoints, metrics, stage files, final/, the results database) while the others wait at a
  barrier. Saving gathers whole tensors (collective: every rank calls the save helpers), loading gives each rank
  its shard, so a checkpoint is the same files whatever the number of processes or the mode.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as tdist

from mixtune.config import RecipeError


class DistributedError(RecipeError):
    """A launch mixtune cannot run, or ranks that disagree; the message says what to do instead."""


class _Forward(torch.nn.Module):
    """What DDP / FSDP wrap: its forward runs `fn(model, ...)`, so everything the loss function touches happens
    inside the wrapper's forward (DDP's gradient hooks armed, FSDP's root parameters gathered)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self.model, *args, **kwargs)


def _is_sharded(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


@dataclass
class Distributed:
    """This process's place in the run: `rank` of `world_size` processes, `mode` single | ddp | fsdp."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    mode: str = "single"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reshard_after_forward: bool = True
    """FSDP: free gathered parameters after each unit's forward (ZeRO-3-like); False keeps them (ZeRO-2-like)."""
    offload: bool = False
    """FSDP: keep the shards and optimizer step on the CPU (accelerate's fsdp_offload_params)."""
    layer_classes: tuple[str, ...] = ()
    """FSDP: class names sharded as their own unit (default: the model's `_no_split_modules`)."""
    zero_stage: int = 2
    """DeepSpeed: ZeRO stage (1 optimizer state, 2 + gradients, 3 + parameters sharded)."""
    zero_options: dict = field(default_factory=dict)
    """DeepSpeed: more of the `zero_optimization` section (offload devices, a config file's bucket sizes)."""
    _wrapped: Any = field(default_factory=weakref.WeakKeyDictionary, repr=False)
    _engines: Any = field(default_factory=weakref.WeakKeyDictionary, repr=False)
    _replicas: Any = field(default_factory=weakref.WeakKeyDictionary, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---------------------------------------------------------------------------------------------- collectives
    def barrier(self) -> None:
        if self.world_size > 1:
            tdist.barrier(device_ids=[self.local_rank] if self.device.type == "cuda" else None)

    def all_reduce_sum(self, value: Any) -> Any:
        """The sum over ranks of a number, a list of numbers or a tensor (same kind back; float64 on the wire)."""
        if self.world_size == 1:
            return value
        t = torch.as_tensor(value, dtype=torch.float64).to(self.device)
        tdist.all_reduce(t)
        if torch.is_tensor(value):
            return t.to(value.dtype)
        if isinstance(value, (list, tuple)):
            return [float(x) for x in t.tolist()]
        return int(t.item()) if isinstance(value, int) else float(t.item())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (decisions read from files are made once, on rank 0)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    # ------------------------------------------------------------------------------------------------- the data
    def shard(self, items: list) -> list:
        """This rank's round-robin share of a step's items (may be empty at an epoch's tail)."""
        return list(items[self.rank::self.world_size])

    def micro_batches(self, picked: list[int], grad_accum: int,
                      build: Callable[[list[int], int], list[Any]]) -> list[tuple[Any, float]]:
        """This rank's micro-batches of a step over `picked` (every rank's examples) as (micro, weight) pairs.
        `build(indices, n)` makes min(len(indices), n) micro-batches of this rank's share. Every rank gets as many
        as the rank with the largest share, the missing ones repeated at weight 0 (a rank left with no example
        repeats the step's first one), so all ranks run the same collectives."""
        mine = self.shard(picked)
        micros = [(m, 1.0) for m in build(mine, grad_accum)] if mine else []
        if self.world_size == 1:
            return micros
        count = min(grad_accum, math.ceil(len(picked) / self.world_size))
        filler = micros[0][0] if micros else build(picked[:1], 1)[0]
        return micros + [(filler, 0.0)] * (count - len(micros))

    # ------------------------------------------------------------------------------------------------ the model
    def wrap(self, model: torch.nn.Module) -> Callable[..., Any]:
        """`forward(fn, *args, **kwargs)`, which calls `fn(model, *args, **kwargs)` inside DDP / FSDP. A model is
        wrapped once (a later stage gets the same wrapper); under FSDP its parameters are sharded from here on, so
        build the optimizer after this call."""
        if self.world_size == 1:
            return lambda fn, *args, **kwargs: fn(model, *args, **kwargs)
        if model not in self._wrapped:
            wrappers = {"fsdp": self._fsdp, "deepspeed": self._deepspeed_forward}
            self._wrapped[model] = wrappers.get(self.mode, self._ddp)(model)
        return self._wrapped[model]

    def _deepspeed_forward(self, model: torch.nn.Module) -> Callable[..., Any]:
        """The forward of the model's DeepSpeed engine, which `attach` makes with the stage's optimizer (a later stage
        gets a new engine around the same model). Under ZeRO-3 rank 0 keeps a whole copy first (`main_model`)."""
        if self.zero_stage == 3 and self.is_main:
            self._replicas[model] = copy.deepcopy(model).to("cpu")

        def forward(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            if model not in self._engines:
                raise DistributedError("under DeepSpeed make the optimizer (engine.make_optimizer) before the first "
                                       "forward: the engine is made with it")
            return self._engines[model](fn, *args, **kwargs)

        return forward

    def attach(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: Any) -> Any:
        """The optimizer a loop holds: `optimizer` itself, or under DeepSpeed a `ZeroOptimizer` around the engine
        made here from the model and `optimizer` (ZeRO partitions its state; under stage 3 the parameters too)."""
        if self.mode != "deepspeed" or self.world_size == 1:
            return optimizer
        import deepspeed

        if model in self._engines:  # a later stage: the previous engine's hooks leave the model first
            self._engines.pop(model).destroy()
        config = {"train_micro_batch_size_per_gpu": max(1, cfg.batch_size // cfg.grad_accum),
                  "gradient_accumulation_steps": 1, "managed_gradient_accumulation": False,
                  "gradient_clipping": cfg.max_grad_norm, "steps_per_print": 2**62, "wall_clock_breakdown": False,
                  "zero_allow_untested_optimizer": True, "bf16": {"enabled": False}, "fp16": {"enabled": False},
                  "zero_optimization": {**self.zero_options, "stage": self.zero_stage}}
        engine, _, _, _ = deepspeed.initialize(model=_Forward(model), optimizer=optimizer, config=config,
                                               dist_init_required=False)
        self._engines[model] = engine
        return ZeroOptimizer(engine, optimizer, self)

    def _ddp(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        # Buffers (rotary tables) are constants: no broadcast per forward. DDP's constructor copies rank 0's
        # parameters to every rank.
        ids = [self.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(_Forward(model), device_ids=ids, forward_sync_buffers=False)

    def _fsdp(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

        for t in [*model.parameters(), *model.buffers()]:  # every rank shards the same (rank 0's) weights
            tdist.broadcast(t.data, src=0)
        if self.is_main:  # rank 0 evaluates and saves on a whole copy (`main_model`)
            self._replicas[model] = copy.deepcopy(model).to("cpu")
        names = set(self.layer_classes) or {n for m in model.modules() for n in getattr(m, "_no_split_modules", None)
                                            or ()}
        options = {"reshard_after_forward": self.reshard_after_forward,
                   "offload_policy": CPUOffloadPolicy() if self.offload else OffloadPolicy()}
        for module in model.modules():
            if type(module).__name__ in names:
                fully_shard(module, **options)
        root = _Forward(model)
        fully_shard(root, **options)
        return root

    @contextmanager
    def main_model(self, model: torch.nn.Module) -> Iterator[torch.nn.Module | None]:
        """The model as one process holds it, on rank 0 (None on the others, which wait at a barrier on exit): for
        evaluation and saving. Under FSDP rank 0's whole copy first gets the gathered weights (every rank enters)."""
        if self.world_size == 1:
            yield model
            return
        plain = model if self.is_main else None
        if self._sharded(model):  # every rank gathers; rank 0 fills its whole copy
            with self.whole_params(model):
                state = self.gather(model.state_dict())
            if self.is_main:
                plain = self._replicas[model]
                plain.load_state_dict(state, strict=False)
                plain.to(self.device)
        try:
            yield plain
        finally:
            if plain is not None and plain is not model:
                plain.to("cpu")
            self.barrier()

    # ------------------------------------------------------------------------------------------- state (save/load)
    def gather(self, tree: Any) -> Any:
        """`tree` (a state dict or an optimizer state) with sharded tensors made whole, on rank 0; None on the
        others. Collective under FSDP: every rank calls it, with the same keys in the same order."""
        if self.world_size == 1:
            return tree
        copy_out = self.mode == "deepspeed" and self.zero_stage == 3  # gathered ZeRO-3 storage is freed after use
        whole = _map_tensors(tree, lambda t: t.full_tensor().cpu() if _is_sharded(t) else t.detach().cpu().clone()
                             if copy_out else t)
        return whole if self.is_main else None

    def _sharded(self, model: torch.nn.Module) -> bool:
        """Whether the model's parameters are split over the ranks (FSDP, ZeRO-3): whole only when gathered."""
        if self.mode == "fsdp":
            return model in self._wrapped
        return self.mode == "deepspeed" and self.zero_stage == 3 and model in self._engines

    def whole_params(self, model: torch.nn.Module, modifier: int | None = None):
        """A context in which the model's parameters are whole on every rank (ZeRO-3 gathers them; collective: every
        rank enters). `modifier=0`: rank 0 changes them inside and they are broadcast and re-partitioned on exit."""
        if self.mode != "deepspeed" or not self._sharded(model):
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=modifier)

    def local(self, value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A whole tensor as `like` is held: this rank's shard when `like` is sharded (no communication)."""
        if not _is_sharded(like) or _is_sharded(value):
            return value
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements,
                                 src_data_rank=None)

    def load_model_state(self, model: torch.nn.Module, weights: dict[str, torch.Tensor]):
        """`model.load_state_dict(weights, strict=False)` with whole tensors, sharded or not; (missing, unexpected)."""
        with self.whole_params(model, modifier=0):
            current = model.state_dict()
            weights = {k: self.local(v, current[k]) if k in current else v for k, v in weights.items()}
            return model.load_state_dict(weights, strict=False)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """`optimizer.load_state_dict(state)` with a whole state (a checkpoint's), sharded or not."""
        if isinstance(optimizer, ZeroOptimizer):
            optimizer.load_state_dict(state)
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        per_param = {i: {k: self.local(v, params[int(i)]) if torch.is_tensor(v) and v.shape == params[int(i)].shape
                         else v for k, v in s.items()} for i, s in state["state"].items()}
        optimizer.load_state_dict({**state, "state": per_param})

    def close(self) -> None:
        if self.world_size > 1 and tdist.is_initialized():
            tdist.destroy_process_group()


class ZeroOptimizer:
    """The optimizer a stage loop holds under DeepSpeed. `step()` is the engine's step (ZeRO reduces the gradients
    the loop's backward passes accumulated, clips to `train.max_grad_norm`, runs AdamW on its partition and gathers
    the updated parameters) and returns the pre-clip gradient norm; gradients are zeroed by it. The learning rate
    lives in the AdamW's param groups (`param_groups`, what the schedule sets). `state_dict()` is collective: every
    rank's ZeRO partition, gathered to every rank (a checkpoint resumes on the same number of ranks)."""

    def __init__(self, engine: Any, base: torch.optim.Optimizer, dist: Distributed):
        self.engine, self.base, self.dist = engine, base, dist

    @property
    def param_groups(self) -> list[dict]:
        return self.base.param_groups

    def step(self) -> float:
        self.engine.step()
        return float(self.engine.get_global_grad_norm() or 0.0)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to do: the engine's step zeroes the gradients."""

    def state_dict(self) -> dict:
        mine = _map_tensors(self.engine.optimizer.state_dict(), lambda t: t.detach().cpu())
        ranks: list[Any] = [None] * self.dist.world_size
        tdist.all_gather_object(ranks, mine)
        return {"zero_stage": self.dist.zero_stage, "world_size": self.dist.world_size, "ranks": ranks}

    def load_state_dict(self, state: dict) -> None:
        got = (state.get("zero_stage"), state.get("world_size"))
        if got != (self.dist.zero_stage, self.dist.world_size):
            raise DistributedError(f"the optimizer state was saved by ZeRO stage {got[0]} on {got[1]} processes; this "
                                   f"run is stage {self.dist.zero_stage} on {self.dist.world_size}: resume it the way it "
                                   f"was launched (or set train.fresh_optimizer)")
        self.engine.optimizer.load_state_dict(state["ranks"], load_optimizer_states=True,
                                              load_from_fp32_weights=True)


def _map_tensors(tree: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if torch.is_tensor(tree):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _map_tensors(v, fn) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_tensors(v, fn) for v in tree)
    return tree


_CURRENT: Distributed | None = None


def dist_setup(cfg: Any = None) -> Distributed:
    """This process's `Distributed`: joins the process group the first time it is called under torchrun /
    accelerate launch (WORLD_SIZE > 1), else a single process. `cfg` (a TrainConfig) gives the mode and timeout;
    later calls (the stages) return the same object."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(device=torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    mode = getattr(cfg, "distributed", "ddp")
    if _env_flag("ACCELERATE_USE_FSDP"):
        mode = "fsdp"
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        mode = "deepspeed"
    zero_stage, zero_options = _zero_settings(cfg) if mode == "deepspeed" else (2, {})
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not tdist.is_initialized():
        timeout = timedelta(seconds=getattr(cfg, "dist_timeout_s", 7200))
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout,
                                 device_id=device if device.type == "cuda" else None)
    layers = tuple(n.strip() for n in os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if n.strip())
    _CURRENT = Distributed(rank=tdist.get_rank(), world_size=tdist.get_world_size(), local_rank=local_rank,
                           mode=mode, device=device, layer_classes=layers, offload=_env_flag("FSDP_OFFLOAD_PARAMS"),
                           zero_stage=zero_stage, zero_options=zero_options,
                           reshard_after_forward=os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
                           != "false")
    return _CURRENT


def _zero_settings(cfg: Any) -> tuple[int, dict]:
    """(ZeRO stage, more of `zero_optimization`) from accelerate's DeepSpeed launch (its zero_stage, offload devices,
    or a DeepSpeed config file's zero_optimization section), else `train.zero_stage`. Batch sizes, clipping,
    precision, optimizer and schedule always come from the recipe."""
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise DistributedError("train.distributed: deepspeed needs DeepSpeed: pip install 'mixtune[deepspeed]'") from None
    options: dict = {}
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    if path:
        import json
        from pathlib import Path

        try:
            options = dict(json.loads(Path(path).read_text()).get("zero_optimization") or {})
        except (OSError, ValueError) as e:
            raise DistributedError(f"{path}: cannot read the DeepSpeed config ({e})") from None
    for key, env in (("offload_optimizer", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"),
                     ("offload_param", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE")):
        device = os.environ.get(env, "").strip().lower()
        if device and device != "none":
            options[key] = {"device": device}
    stage = options.pop("stage", None) or os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") or getattr(
        cfg, "zero_stage", 2)
    if str(stage) not in ("1", "2", "3"):
        raise DistributedError(f"DeepSpeed ZeRO stage {stage}: mixtune trains with stage 1, 2 or 3 (stage 0 is DDP: "
                               f"train.distributed=ddp)")
    return int(stage), options


def dist_close() -> None:
    """Leave the process group (end of a command); a single process has nothing to close."""
    global _CURRENT
    if _CURRENT is not None:
        _CURRENT.close()
        _CURRENT = None
