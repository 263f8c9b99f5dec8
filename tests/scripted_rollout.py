"""A rollout backend for tests only (registered with monkeypatch in ROLLOUT_BACKENDS): instead of sampling, it
answers every prompt with scripted texts, so a stage test knows which programs the sandbox runs.

For a prompt whose text ends with a given CCCS prefix of BODY, sample k gets `ANSWERS[k % 2]` minus that prefix:
the correct body, or a wrong one with a line its tests never execute. It returns no log-probs (the stage then
recomputes π_old) and records the prefixes it was given."""

from __future__ import annotations

from mixtune.train.rollout import Sample

PROMPT = 'def add_total(nums: list[int]) -> int:\n    """Add 7 to each number, then return the sum."""\n'
BODY = "    nums = [x + 7 for x in nums]\n    total = sum(nums)\n    return total\n"
WRONG = "    nums = [x + 7 for x in nums]\n    total = sum(nums)\n    if total < 0:\n        return 0\n    return total + 1\n"
TESTS = "def check(candidate):\n    assert candidate([1, 2]) == 17\n    assert candidate([0]) == 7\n"
ANSWERS = (BODY, WRONG)
GIVEN: list[str] = []


class ScriptedRollout:
    name = "scripted"

    def __init__(self, model, tokenizer, cfg):
        self.tokenizer = tokenizer

    def sync(self, model) -> None:
        pass

    def sample(self, prompt_ids, *, n, max_new_tokens, temperature, top_p, stop, seed):
        out = []
        for p, ids in enumerate(prompt_ids):
            text = self.tokenizer.decode(ids)
            given = text.split("<|im_start|>assistant\n")[-1]
            GIVEN.append(given)
            for k in range(n):
                answer = ANSWERS[k % 2][len(given):]
                tokens = self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [
                    self.tokenizer.convert_tokens_to_ids("<|im_end|>")]
                out.append(Sample(p, tuple(ids), tuple(tokens), None, answer, "stop"))
        return out
