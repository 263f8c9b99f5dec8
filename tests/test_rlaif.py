"""RLAIF: soft labels averaged over both candidate orders with position bias reported (a scripted labeller whose
probabilities the test sets), the endpoint labeller over real HTTP (a loopback server with logprobs), a local model
as labeller (left padding = one row at a time), direct RLAIF's expected score with "10" as one or two tokens
(hand-worked), soft labels in the pair contract and the reward loss, and the `rlaif` stage end to end (full and
LoRA): labelled, trained, saved as a sequence-classification model, reloaded, resumed after a kill without
labelling again."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import pair_examples
from labeller_server import LabellerServer
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from mixtune.config import Recipe
from mixtune.data.formats import read_examples
from mixtune.data.pair_dataset import build_pair_rows, pair_micro_batches
from mixtune.evaluate.labeller import EndpointLabeller, LocalLabeller, soft_preferences
from mixtune.evaluate.reward_model import reward_scores
from mixtune.model.load import load_checkpoint, load_tokenizer
from mixtune.model.reward_head import reward_model_from_causal
from mixtune.train import rlaif
from mixtune.train.losses import soft_pairwise_loss
from mixtune.train.reward import reward_micro_loss
from mixtune.train.rewards_ai import expected_score, rlaif_rewards, rlaif_score
from mixtune.train.run import train


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def first_response(text: str) -> str:
    return re.search(r"Response 1 - (.*?)\n\nResponse 2 - ", text, re.DOTALL).group(1)


class ScriptedLabeller:
    """P("1"), P("2") by the answer shown first: `probs[first answer]`."""

    name = "scripted"

    def __init__(self, probs: dict[str, dict[str, float]]):
        self.probs, self.calls = probs, []

    def next_token_probs(self, conversations, continuation=""):
        self.calls.append((len(conversations), continuation))
        return [self.probs.get(first_response(c[-1]["content"])) for c in conversations]


def pair(i: int, chosen: str, rejected: str) -> dict:
    return {"id": f"p{i}", "source": "s", "messages": user(f"q{i}"), "chosen": chosen, "rejected": rejected}


def test_soft_label_is_the_mean_over_both_orders_and_position_bias_is_reported():
    labeller = ScriptedLabeller({
        "A": {"1": 0.8, "2": 0.2}, "B": {"1": 0.6, "2": 0.4},  # pair 0: P(A) = 0.8 first, 0.4 second -> 0.6
        "C": {"1": 0.45, "2": 0.05, "7": 0.5}, "D": {"1": 0.2, "2": 0.6},  # pair 1: 0.9 and 0.75 -> 0.825
        "E": {"5": 1.0}, "F": {"1": 0.5, "2": 0.5},  # pair 2: no "1"/"2" when E is first: invalid
    })
    labels, stats = soft_preferences(labeller, [pair(0, "A", "B"), pair(1, "C", "D"), pair(2, "E", "F")])
    assert labels[2] is None and labels[:2] == pytest.approx([0.6, 0.825])
    assert labeller.calls == [(6, "")]  # both orders of every pair in one call
    assert stats["labelled"] == 2 and stats["invalid"] == 1
    assert stats["position_disagreement"] == 0.5  # pair 0 prefers whichever answer comes first
    assert stats["first_position_wins"] == 0.75  # 3 of the 4 orders: A first, B first, C first (not D)
    assert stats["agreement_with_data"] == 1.0 and stats["mean_label"] == pytest.approx(0.7125)


def test_expected_score_hand_worked_with_10_as_one_or_two_tokens():
    # "1" then "0": P(1) = 0.2·(1 − 0.5) = 0.1, P(10) = 0.1; with P(5) = 0.3, P(9) = 0.1 the mass is 0.6:
    # s = (1·0.1 + 10·0.1 + 5·0.3 + 9·0.1) / 0.6 = 3.5 / 0.6 = 5.8333
    assert expected_score({"1": 0.2, "5": 0.3, "9": 0.1}, {"0": 0.5}) == pytest.approx(3.5 / 0.6)
    # a "10" token: read directly, P("1") stays on 1: (1·0.1 + 10·0.3 + 2·0.1) / 0.5 = 6.6
    assert expected_score({"1": 0.1, "10": 0.3, "2": 0.1}, {"0": 0.9}) == pytest.approx(6.6)
    assert expected_score({"1": 0.5, "3": 0.5}, None) == pytest.approx(2.0)  # no next-token view: "1" is 1
    assert expected_score({"0": 0.4}, None) is None and expected_score(None, None) is None


def test_rlaif_rewards_ask_for_the_token_after_1_only_without_a_10_token():
    class Scores:
        def __init__(self):
            self.calls = []

        def next_token_probs(self, conversations, continuation=""):
            self.calls.append((len(conversations), continuation))
            if continuation:
                return [{"0": 1.0} for _ in conversations]  # after "1" always "0": all of P("1") is 10
            return [{"1": 0.5, "10": 0.5} if "Response - tens" in c[-1]["content"] else {"1": 0.5, "4": 0.5}
                    for c in conversations]

    labeller = Scores()
    rewards, invalid = rlaif_rewards(labeller, [user("a"), user("b")], ["tens", "plain"])
    # "tens": P(1) = P(10) = 0.5 -> s = 5.5 -> 0; "plain": "1" followed by "0" -> 10 and 4 -> s = 7 -> 1/3
    assert rewards == pytest.approx([0.0, (7 - 5.5) / 4.5]) and invalid == 0
    assert labeller.calls == [(2, ""), (1, "1")]


def script(text: str) -> list[dict[str, float]]:
    """The loopback labeller: preference prompts by the answer shown first, score prompts by the response."""
    if text.endswith("Preferred Response="):
        first = first_response(text)
        return [{"1": 0.7, "2": 0.2, "x": 0.1} if first == "good" else {"1": 0.3, "2": 0.6, "x": 0.1}]
    if "Response - greedy one" in text:  # greedy "1", then P("0" | "1") = 0.5
        return [{"1": 0.6, "7": 0.3, "2": 0.1}, {"0": 0.5, "<|im_end|>": 0.5}]
    return [{"7": 0.5, "1": 0.3, "3": 0.2}, {"<|im_end|>": 1.0}]  # greedy "7": P(· | "1") unseen


def test_endpoint_labeller_over_http_with_logprobs():
    with LabellerServer(script) as server:
        labeller = EndpointLabeller(server.base_url, "labeller", api_key_env=None, timeout_s=5, max_retries=0)
        labels, stats = soft_preferences(labeller, [pair(0, "good", "bad")])
        # (good, bad): 0.7 / 0.9; (bad, good): 0.6 / 0.9 -> mean 0.7222
        assert labels == pytest.approx([(0.7 / 0.9 + 0.6 / 0.9) / 2]) and stats["position_disagreement"] == 0.0
        body = server.requests[0]
        assert (body["logprobs"], body["top_logprobs"], body["max_tokens"], body["temperature"]) == (True, 20, 2, 0.0)
        rewards, _ = rlaif_rewards(labeller, [user("q"), user("q")], ["greedy one", "greedy seven"])
        # greedy "1": P(1) = P(10) = 0.3, P(7) = 0.3, P(2) = 0.1 -> s = 5.6; greedy "7": P(1) = 0.3 whole -> 4.4
        assert rewards == pytest.approx([(5.6 - 5.5) / 4.5, (4.4 - 5.5) / 4.5], abs=1e-9)
        assert len(server.requests) == 4  # 2 orders + 2 responses: the "after 1" view comes from the same replies
        assert rlaif_score(labeller, user("q"), "greedy seven") == pytest.approx(-1.1 / 4.5)
        labeller.close()


def test_local_labeller_batched_with_left_padding_equals_one_row_at_a_time(base_dir):
    model, tokenizer = AutoModelForCausalLM.from_pretrained(base_dir).eval(), load_tokenizer(base_dir)
    convs = [user("a short one"), user("a much longer question with many more words in it than the other")]
    batched = LocalLabeller(model, tokenizer, batch_size=2).next_token_probs(convs, continuation="1")
    alone = [LocalLabeller(model, tokenizer, batch_size=1).next_token_probs([c], continuation="1")[0] for c in convs]
    assert set(batched[0]) >= {"1", "2"} and sum(batched[0].values()) < 1
    for b, a in zip(batched, alone):
        assert b == pytest.approx(a, abs=1e-6)


def test_pair_contract_soft_label_read_and_a_bad_one_named(tmp_path):
    good = {"messages": user("q"), "chosen": "a", "rejected": "b", "label": 0.3}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "label": 1.5}) + "\n")
    with pytest.raises(ValueError, match=r"p.jsonl:2: label: expected a probability in \[0, 1\]"):
        read_examples(path, format="pairs", source="s")
    path.write_text(json.dumps(good) + "\n")
    assert read_examples(path, format="pairs", source="s").examples[0]["label"] == 0.3


def test_soft_labels_are_the_reward_losss_targets(base_dir):
    tokenizer = load_tokenizer(base_dir)
    model = reward_model_from_causal(AutoModelForCausalLM.from_pretrained(base_dir), tokenizer.pad_token_id, seed=1)
    examples = [{**ex, "label": lab} for ex, lab in zip(pair_examples(3, seed=2), (0.9, 0.2, 1.0))]
    recipe = Recipe.model_validate({"name": "r", "model": {"path": str(base_dir)}, "train": {"bf16": False},
                                    "preference": {"soft_label": True}})
    pairs = build_pair_rows(examples, tokenizer, recipe.data)
    (micro,) = pair_micro_batches(pairs, [0, 1, 2], 1, 128, tokenizer.pad_token_id)
    loss, stats = reward_micro_loss(model, micro, recipe)
    rewards = reward_scores(model, micro)
    r_c, r_r = rewards[micro["chosen_index"]], rewards[micro["rejected_index"]]
    expected = soft_pairwise_loss(r_c, r_r, torch.tensor([0.9, 0.2, 1.0])).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), abs=1e-6)
    agree = [float((r_c[k] > r_r[k]) == (lab > 0.5)) for k, lab in enumerate((0.9, 0.2, 1.0))]
    assert stats["accuracy"] == pytest.approx(sum(agree))  # agreement with each label's side
    hard = reward_micro_loss(model, micro, recipe.model_copy(update={"preference": recipe.preference.model_copy(
        update={"soft_label": False})}))[0]
    assert float(hard.detach()) != pytest.approx(float(loss.detach()))  # without soft_label the labels are not used


# ------------------------------------------------------------------------------------------- the stage, e2e
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prefs = root / "prefs.jsonl"
    prefs.write_text("".join(json.dumps({k: ex[k] for k in ("messages", "chosen", "rejected")}) + "\n"
                             for ex in pair_examples(24, seed=6)))
    return {"prefs": str(prefs)}


def tree(root, base_dir, files, adapter="none") -> dict:
    return {"name": "rl", "out_dir": str(root / "run"), "model": {"path": str(base_dir)},
            "adapter": {"type": adapter, "r": 4, "alpha": 8},
            "data": {"sources": [{"name": "prefs", "path": files["prefs"], "eval_count": 4}]},
            "train": {"lr": 1e-2, "batch_size": 4, "bf16": False, "warmup_ratio": 0.0, "log_every": 1,
                      "save_every": 1},
            "preference": {"labeller": str(base_dir), "reward_epochs": 1},
            "strategy": {"name": "stages", "stages": [{"name": "rm", "kind": "rlaif", "sources": ["prefs"]}]}}


def losses(recipe) -> dict[int, float]:
    path = recipe.run_dir / "stages/0-rm/metrics.jsonl"
    return {row["step"]: row["loss"] for row in map(json.loads, path.read_text().splitlines()) if "loss" in row}


@pytest.mark.parametrize("adapter", ["none", "lora"])
def test_rlaif_stage_labels_trains_saves_reloads_and_resumes_without_labelling_again(tmp_path, base_dir, files,
                                                                                      adapter, monkeypatch):
    from peft import PeftModel

    made = []
    real = rlaif.make_labeller
    monkeypatch.setattr(rlaif, "make_labeller", lambda ctx: made.append(1) or real(ctx))  # the real local labeller
    straight = Recipe.model_validate(tree(tmp_path / "a", base_dir, files, adapter))
    (stage,) = train(straight)["stages"]
    assert (stage["kind"], stage["n_examples"], stage["steps"], stage["scores"]) == ("rlaif", 20, 5, {})
    labelled = [json.loads(x) for x in (straight.run_dir / "stages/0-rm/labelled_pairs.jsonl").read_text().splitlines()]
    assert len(labelled) == 20 and all(0 < p["label"] < 1 for p in labelled)  # a random model: soft, not 0/1
    metrics = stage["metrics"]
    assert metrics["labeller/labelled"] == 20 and 0 <= metrics["labeller/position_disagreement"] <= 1
    assert "eval/prefs/reward/accuracy" in metrics  # held-out pairs, scored against their own labels
    final = straight.run_dir / "final"
    ids = torch.tensor([[5, 6, 7, 8]])
    if adapter == "none":
        plain = AutoModelForSequenceClassification.from_pretrained(final)
    else:
        plain = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1),
                                          final / "adapter")
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, load_checkpoint(final)(input_ids=ids).logits, atol=1e-6)
    killed = Recipe.model_validate(tree(tmp_path / "b", base_dir, files, adapter))
    made.clear()
    assert train(killed, stop_at_step=2).get("stopped")
    train(killed, resume=True)
    assert made == [1]  # labelled once, before the kill
    assert losses(killed) == pytest.approx(losses(straight), abs=1e-6)
