"""Several processes on CPU (gloo): 2 processes x batch b train exactly like 1 x batch 2b (DDP and FSDP, full and
LoRA, through torchrun and accelerate launch with the shipped configs); a killed 2-process run resumes to the same
next losses; only rank 0 writes; FSDP's final/ and checkpoints are whole models that load on one process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import chat_examples
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from mixtune.config import Recipe
from mixtune.train.distributed import Distributed
from mixtune.train.run import train

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5
TIMEOUT_S = 420  # one 2-process run takes ~1 min on a loaded 2-core machine


# ------------------------------------------------------------------------------------------------ without processes
def test_python_m_mixtune_help():
    out = subprocess.run([sys.executable, "-m", "mixtune", "--help"], capture_output=True, text=True, timeout=60,
                         env=_env(), check=False)
    assert out.returncode == 0 and "verbs:" in out.stdout and "train" in out.stdout


def test_each_rank_trains_its_share_and_all_run_the_same_number_of_micro_batches():
    def build(ids, n):  # like split_micro_batches: min(len, n) micro-batches
        return [ids[k::n] for k in range(min(len(ids), n))]

    # 5 examples, 2 ranks: rank 0 gets 0, 2, 4 and rank 1 gets 1, 3; each example once
    rank0, rank1 = Distributed(rank=0, world_size=2), Distributed(rank=1, world_size=2)
    assert rank0.shard([10, 11, 12, 13, 14]) == [10, 12, 14] and rank1.shard([10, 11, 12, 13, 14]) == [11, 13]
    assert rank0.micro_batches([10, 11, 12, 13, 14], 2, build) == [([10, 14], 1.0), ([12], 1.0)]
    assert rank1.micro_batches([10, 11, 12, 13, 14], 2, build) == [([11], 1.0), ([13], 1.0)]
    # 3 examples, grad_accum 2: rank 0 has 2 micro-batches, rank 1 one example: it repeats it at weight 0
    assert rank1.micro_batches([10, 11, 12], 2, build) == [([11], 1.0), ([11], 0.0)]
    # an epoch's last example: rank 1 has none and repeats the step's first one at weight 0
    assert rank0.micro_batches([7], 4, build) == [([7], 1.0)]
    assert rank1.micro_batches([7], 4, build) == [([7], 0.0)]
    # one process: nothing padded, nothing reduced
    single = Distributed()
    assert single.micro_batches([1, 2, 3], 4, build) == [([1], 1.0), ([2], 1.0), ([3], 1.0)]
    assert single.all_reduce_sum([1.5, 2]) == [1.5, 2] and single.is_main


def test_shipped_accelerate_configs_parse_and_select_their_engine(monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file

    from mixtune.train import distributed

    configs = {p.stem: load_config_from_file(str(p)) for p in (REPO / "recipes" / "accelerate").glob("*.yaml")}
    assert {k: str(c.distributed_type).split(".")[-1] for k, c in configs.items()} == {
        "ddp": "MULTI_GPU", "fsdp": "FSDP", "fsdp-zero2": "FSDP", "deepspeed-zero2": "DEEPSPEED",
        "deepspeed-zero3": "DEEPSPEED"}
    assert [configs[k].fsdp_config["fsdp_reshard_after_forward"] for k in ("fsdp", "fsdp-zero2")] == [True, False]
    assert [configs[f"deepspeed-zero{s}"].deepspeed_config["zero_stage"] for s in (2, 3)] == [2, 3]
    # what `accelerate launch` with a DeepSpeed config sets, read before any process group is joined
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu")
    assert distributed._zero_settings(None) == (3, {"offload_optimizer": {"device": "cpu"}})
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "0")
    with pytest.raises(distributed.DistributedError, match="stage 1, 2 or 3"):
        distributed._zero_settings(None)


# ------------------------------------------------------------------------------------------------ 2 processes
@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist-data")
    files = {}
    # 65 examples, 8 per step: the epoch ends on a step of 1 example, where rank 1 has none (a weight-0 repeat)
    for ability, seed, n in (("code", 1, 22), ("math", 2, 22), ("general", 3, 21)):
        path = root / f"{ability}.jsonl"
        path.write_text("".join(json.dumps({"messages": ex["messages"]}) + "\n"
                                for ex in chat_examples(n, seed=seed, ability=ability, source=ability)))
        files[ability] = str(path)
    return files


def tree_for(out: Path, base_dir, data_files, batch_size: int, **train) -> dict:
    return {"name": "r", "out_dir": str(out), "model": {"path": str(base_dir)},
            "data": {"sources": [{"name": a, "path": p, "ability": a} for a, p in data_files.items()]},
            "train": {"lr": 5e-3, "batch_size": batch_size, "bf16": False, "epochs": 1, "warmup_ratio": 0.0,
                      "log_every": 1, **train}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, base_dir, data_files):
    """One process, batch 8 (full fine-tuning and LoRA): the per-step losses 2 x 4 must reproduce."""
    root = tmp_path_factory.mktemp("dist-ref")
    out = {}
    for name, extra in (("full", {}), ("lora", {"adapter": {"type": "lora", "r": 4, "alpha": 8}})):
        tree = {**tree_for(root / name, base_dir, data_files, 8), **extra}
        train(Recipe.model_validate(tree), log=lambda _: None)
        out[name] = root / name
    return out


def _env() -> dict:
    src = str(REPO / "src")
    path = os.pathsep.join(p for p in (src, str(REPO / "tests"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
            "TOKENIZERS_PARALLELISM": "false"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(_free_port()), *args]


def accelerate(config: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "recipes" / "accelerate" /
            config), "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port",
            str(_free_port()), *args]


def run_bounded(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`cmd` in its own process group, killed whole (launcher and every rank) if it runs past TIMEOUT_S: a hung
    collective fails the test instead of leaving ranks behind."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=cwd,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(cmd[-4:])}: still running after {TIMEOUT_S} s (killed)\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def launch(cmd: list[str], tmp_path: Path, tree: dict, *extra: str, ok: bool = True) -> Path:
    recipe = tmp_path / f"{Path(tree['out_dir']).name}.yaml"
    recipe.write_text(yaml.safe_dump(tree))
    out = run_bounded([*cmd, "train", "-c", str(recipe), *extra], tmp_path)
    assert (out.returncode == 0) == ok, out.stdout[-2000:] + out.stderr[-4000:]
    return Path(tree["out_dir"])


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "stages" / "0-multi_task" / "metrics.jsonl").open()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)), f"duplicate metric rows: {steps}"  # rank 0 alone writes
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def assert_same_losses(got: dict[int, float], want: dict[int, float]) -> None:
    assert sorted(got) == sorted(want) == list(range(1, 10))  # ceil(65 / 8) steps
    worst = max(abs(got[s] - want[s]) for s in want)
    assert worst < TOL, f"largest per-step loss difference {worst:.2e}: {got} vs {want}"


@pytest.mark.slow
def test_torchrun_ddp_two_by_four_equals_one_by_eight_full(tmp_path, base_dir, data_files, reference):
    run = launch(torchrun("-m", "mixtune"), tmp_path, tree_for(tmp_path / "ddp", base_dir, data_files, 4,
                                                               tensorboard=True))
    assert_same_losses(losses(run), losses(reference["full"]))
    # one writer: the files of a one-process run, once; one TensorBoard events file; the lock held by one pid
    names = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts}
    assert names == {p.relative_to(reference["full"]).as_posix() for p in reference["full"].rglob("*")
                     if p.is_file()}
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert len((run / ".lock").read_text().split()) == 1
    a, b = (AutoModelForCausalLM.from_pretrained(r / "final") for r in (run, reference["full"]))
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.allclose(a(ids).logits, b(ids).logits, atol=1e-4)


@pytest.mark.slow
def test_accelerate_launch_ddp_config_two_by_four_equals_one_by_eight_lora(tmp_path, base_dir, data_files,
                                                                           reference):
    tree = {**tree_for(tmp_path / "lora", base_dir, data_files, 4, grad_accum=2),  # accumulation is exact too
            "adapter": {"type": "lora", "r": 4, "alpha": 8}}
    run = launch(accelerate("ddp.yaml", "-m", "mixtune"), tmp_path, tree)
    assert_same_losses(losses(run), losses(reference["lora"]))
    assert (run / "final" / "adapter").is_dir() and not (run / "final" / "model.safetensors").exists()


@pytest.mark.slow
def test_killed_ddp_run_resumes_to_the_same_next_losses(tmp_path, base_dir, data_files, reference):
    tree = tree_for(tmp_path / "killed", base_dir, data_files, 4, save_every=2)
    run = launch(torchrun(str(REPO / "tests" / "dist_kill.py"), "4"), tmp_path, tree, ok=False)  # rank 0 SIGKILLed
    assert sorted(p.name for p in (run / "stages" / "0-multi_task" / "checkpoints").glob("step-*")) == [
        "step-0000002", "step-0000004"]
    assert not (run / "final").exists()
    launch(torchrun("-m", "mixtune"), tmp_path, tree, "--resume")
    got, want = losses(run), losses(reference["full"])
    assert_same_losses(got, want)  # steps 1-4 from the killed run, 5-9 after the resume: each once


@pytest.mark.slow
def test_accelerate_launch_fsdp_trains_like_one_process_and_saves_whole_models(tmp_path, base_dir, data_files,
                                                                              reference):
    tree = tree_for(tmp_path / "fsdp", base_dir, data_files, 4, save_every=4)
    run = launch(accelerate("fsdp.yaml", "-m", "mixtune"), tmp_path, tree)
    assert_same_losses(losses(run), losses(reference["full"]))  # sharded gradients, same steps
    one = AutoModelForCausalLM.from_pretrained(base_dir)
    shapes = {k: v.shape for k, v in one.state_dict().items()}
    checkpoint = load_file(str(run / "stages" / "0-multi_task" / "checkpoints" / "step-0000008" /
                               "weights.safetensors"))
    assert {k: v.shape for k, v in checkpoint.items()}.items() <= shapes.items()  # whole tensors, not shards
    assert one.load_state_dict(checkpoint, strict=False).unexpected_keys == []
    final, ref = (AutoModelForCausalLM.from_pretrained(r / "final") for r in (run, reference["full"]))
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.allclose(final(ids).logits, ref(ids).logits, atol=1e-4)
    assert not torch.allclose(final(ids).logits, one(ids).logits, atol=1e-3)  # it trained


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_accelerate_launch_deepspeed_zero_trains_like_one_process_and_saves_whole_models(tmp_path, base_dir,
                                                                                          data_files, reference,
                                                                                          stage):
    tree = tree_for(tmp_path / f"zero{stage}", base_dir, data_files, 4, save_every=4, grad_accum=2)
    run = launch(accelerate(f"deepspeed-zero{stage}.yaml", "-m", "mixtune"), tmp_path, tree)
    assert_same_losses(losses(run), losses(reference["full"]))  # ZeRO's reduce and step: the same curve
    one = AutoModelForCausalLM.from_pretrained(base_dir)
    checkpoint = load_file(str(run / "stages" / "0-multi_task" / "checkpoints" / "step-0000008" /
                               "weights.safetensors"))
    assert {k: v.shape for k, v in checkpoint.items()}.items() <= {k: v.shape for k, v in
                                                                  one.state_dict().items()}.items()  # whole tensors
    final, ref = (AutoModelForCausalLM.from_pretrained(r / "final") for r in (run, reference["full"]))
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.allclose(final(ids).logits, ref(ids).logits, atol=1e-4)


@pytest.mark.slow
def test_killed_deepspeed_run_resumes_to_the_same_next_losses(tmp_path, base_dir, data_files, reference):
    tree = tree_for(tmp_path / "killed-zero2", base_dir, data_files, 4, save_every=2)
    tree["train"]["distributed"] = "deepspeed"  # torchrun + the recipe switch (no accelerate config)
    run = launch(torchrun(str(REPO / "tests" / "dist_kill.py"), "4"), tmp_path, tree, ok=False)  # rank 0 SIGKILLed
    state = torch.load(run / "stages" / "0-multi_task" / "checkpoints" / "step-0000004" / "trainer_state.pt",
                       weights_only=False)
    assert (state["optimizer"]["zero_stage"], state["optimizer"]["world_size"]) == (2, 2)  # both ranks' partitions
    assert not (run / "final").exists()
    launch(torchrun("-m", "mixtune"), tmp_path, tree, "--resume")
    assert_same_losses(losses(run), losses(reference["full"]))  # steps 1-4 before the kill, 5-9 after the resume


@pytest.mark.slow
def test_torchrun_pretrain_two_by_four_equals_one_by_eight(tmp_path, tiny_tokenizer_dir, tiny_corpus):
    from conftest import tiny_model_section

    from mixtune.train.pretrain import pretrain

    def tree(name: str, batch_size: int) -> dict:
        return {"name": name, "out_dir": str(tmp_path / name), "model": tiny_model_section(tiny_tokenizer_dir),
                "pretrain_corpus": [str(tiny_corpus)],
                "train": {"lr": 3e-3, "batch_size": batch_size, "bf16": False, "max_steps": 6, "seq_len": 32,
                          "warmup_ratio": 0.0, "log_every": 1, "grad_accum": 3}}  # 4 rows in 3 micro-batches

    pretrain(Recipe.model_validate(tree("one", 8)))
    recipe = tmp_path / "two.yaml"
    recipe.write_text(yaml.safe_dump(tree("two", 4)))
    out = run_bounded([*torchrun("-m", "mixtune"), "pretrain", "-c", str(recipe)], tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]

    def rows(name):  # (step, loss) of every metric row: one writer, no duplicates
        return [(r["step"], r["loss"]) for r in map(json.loads, (tmp_path / name / "metrics.jsonl").open())
                if "loss" in r]

    one, two = rows("one"), rows("two")
    assert [s for s, _ in two] == [s for s, _ in one] == list(range(1, 7))
    assert max(abs(a - b) for (_, a), (_, b) in zip(one, two)) < TOL
    assert (tmp_path / "two" / "final" / "model.safetensors").exists()


# ------------------------------------------------------------------------------------- preference and KD stages
def chain_for(out: Path, base_dir, data_files, prefs_file: str, batch_size: int) -> dict:
    """SFT, then DPO, logit distillation (the base as teacher) and a reward model: every kind that shards its steps
    over the ranks. 21 pairs in steps of 8 end on a step of 5 pairs (rank 1 gets 2 of them)."""
    tree = tree_for(out, base_dir, data_files, batch_size)
    tree["data"]["sources"].append({"name": "prefs", "path": prefs_file})
    tree["strategy"] = {"name": "stages", "stages": [
        {"name": "sft", "kind": "sft", "sources": ["code", "math", "general"]},
        {"name": "dpo", "kind": "dpo", "sources": ["prefs"], "overrides": ["preference.beta=0.2"]},
        {"name": "kd", "kind": "distill", "sources": ["math"]},
        {"name": "rm", "kind": "reward", "sources": ["prefs"]}]}
    tree["distill"] = {"teacher": str(base_dir), "loss": "jsd"}
    return tree


def stage_rows(run_dir: Path) -> dict[str, dict[int, dict]]:
    out = {}
    for folder in sorted((run_dir / "stages").iterdir()):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").open()]
        steps = [r["step"] for r in rows if "loss" in r]
        assert len(steps) == len(set(steps)), f"{folder.name}: duplicate metric rows {steps}"  # rank 0 alone writes
        out[folder.name] = {r["step"]: r for r in rows if "loss" in r}
    return out


@pytest.mark.slow
@pytest.mark.parametrize("how", ["torchrun-ddp", "accelerate-fsdp", "accelerate-deepspeed-zero3"])
def test_dpo_distill_and_reward_stages_two_by_four_equal_one_by_eight(tmp_path, base_dir, data_files, how):
    from conftest import pair_examples

    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({k: ex[k] for k in ("messages", "chosen", "rejected")}) + "\n"
                             for ex in pair_examples(21, seed=5, chosen="no", rejected="yes")))
    one = chain_for(tmp_path / "one", base_dir, data_files, str(prefs), 8)
    train(Recipe.model_validate(one), log=lambda _: None)
    config = {"accelerate-fsdp": "fsdp.yaml", "accelerate-deepspeed-zero3": "deepspeed-zero3.yaml"}.get(how)
    cmd = accelerate(config, "-m", "mixtune") if config else torchrun("-m", "mixtune")
    run = launch(cmd, tmp_path, chain_for(tmp_path / "two", base_dir, data_files, str(prefs), 4))
    got, want = stage_rows(run), stage_rows(tmp_path / "one")
    assert sorted(got) == sorted(want) == ["0-sft", "1-dpo", "2-kd", "3-rm"]
    keys = {"1-dpo": ("loss", "rewards/margin", "rewards/accuracy"), "2-kd": ("loss", "kd_loss", "ce_loss"),
            "3-rm": ("loss", "reward/accuracy", "reward/margin")}
    for stage, names in keys.items():
        assert sorted(got[stage]) == sorted(want[stage]) == list(range(1, len(want[stage]) + 1)), stage
        assert len(want[stage]) >= 3, stage
        for step, row in want[stage].items():
            for name in names:  # the gradients of one process with the whole step: the same curve
                assert abs(got[stage][step][name] - row[name]) < TOL, (stage, step, name, got[stage][step], row)
    assert all((run / "stages" / stage / "stage.json").exists() for stage in got)
    a, b = (AutoModelForCausalLM.from_pretrained(r / "final") for r in (run, tmp_path / "one"))
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.allclose(a(ids).logits, b(ids).logits, atol=1e-4)


def test_a_stage_that_generates_from_the_trained_model_is_refused_under_several_processes(tmp_path, base_dir,
                                                                                          data_files, monkeypatch):
    from mixtune.train import distributed

    tree = tree_for(tmp_path / "spin", base_dir, data_files, 4)
    tree["strategy"] = {"name": "stages", "stages": [{"name": "sp", "kind": "spin", "sources": ["math"]}]}
    monkeypatch.setattr(distributed, "_CURRENT", Distributed(rank=0, world_size=2, mode="ddp"))
    with pytest.raises(distributed.DistributedError, match=r"stage sp \(spin\) runs in one process"):
        train(Recipe.model_validate(tree), log=lambda _: None)
    assert not (tmp_path / "spin").exists()  # refused before the run folder exists
