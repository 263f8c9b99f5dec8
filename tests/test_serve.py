"""`mixtune serve` over loopback with the official `openai` client: a tiny Llama with a LoRA adapter in a run folder
trained with the Vicuna template. Answers equal the in-process evaluation backend's; streaming equals non-streaming;
seeded sampling reproduces; bad requests get OpenAI-shaped 4xx errors and the server answers afterwards; concurrent
requests share generate calls; a failing generate call, the request cap and the timeout leave the server up."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import openai
import pytest
import torch

from mixtune.config import Recipe, dump_recipe
from mixtune.evaluate.generate import HFBackend, cut_at_stop
from mixtune.model.adapters import apply_adapter
from mixtune.model.load import load_checkpoint, load_tokenizer
from mixtune.serve import engine as engine_module
from mixtune.serve.app import create_app
from mixtune.serve.engine import BatchEngine, load_served
from mixtune.serve.http import ThreadedServer
from mixtune.train.save import save_final

if TYPE_CHECKING:
    from typing_extensions import Self

QUESTIONS = ["the city of 12?", "how many apples and books 7?", "what is the name of the university?",
             "write a short note about the total cost 45?", "which list is for while 3?", "yes or no 9?",
             "please reply with the answer 21?", "the major works at the city 88?"]
GEN = 12  # max_tokens of the equality tests


def lora_run(root: Path, base_dir: Path, template: str = "vicuna", name: str = "lora-run") -> Path:
    """A run folder as `mixtune train` leaves one for a LoRA run: `final/` (adapter, tokenizer, the pointer to its
    base) and the resolved `config.yaml` naming the template it trained with. The adapter is perturbed so that it
    changes the logits."""
    recipe = Recipe.model_validate({"name": name, "data": {"template": template},
                                    "adapter": {"type": "lora", "r": 4, "alpha": 8}})
    model = apply_adapter(load_checkpoint(base_dir), recipe.adapter)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    run_dir = root / name
    save_final(model, load_tokenizer(base_dir), run_dir / "final", adapter="lora", base=str(base_dir))
    (run_dir / "config.yaml").write_text(dump_recipe(recipe))
    return run_dir


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, base_dir):
    return load_served(lora_run(tmp_path_factory.mktemp("serve"), base_dir))


class Served:
    """A server on a free loopback port in a thread, an `openai` client for it, and raw httpx for bad bodies."""

    def __init__(self, loaded, **app_kwargs):
        self.engine = BatchEngine(loaded, max_batch=8, window_s=0.05)
        self.app = create_app(loaded, self.engine, "lora-run", **app_kwargs)
        self.http = ThreadedServer(self.app)
        self.client = openai.OpenAI(base_url=self.http.base_url, api_key="unused", max_retries=0, timeout=60)

    def __enter__(self) -> Self:
        self.http.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.http.stop()
        self.engine.close()
        assert not self.http.thread.is_alive()

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(self.http.base_url + path, timeout=60, **kwargs)

    def stats(self) -> dict:
        return httpx.get(self.http.base_url + "/stats", timeout=10).json()


@pytest.fixture(scope="module")
def served(loaded):
    with Served(loaded) as s:
        yield s


def in_process(loaded) -> HFBackend:
    return HFBackend(loaded.model, loaded.tokenizer, loaded.template, batch_size=1, progress=False)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_resolves_the_run_template_and_lists_the_model(served, loaded):
    assert loaded.template == "vicuna" and "data.template=vicuna" in loaded.template_why
    assert loaded.template_stop == [loaded.tokenizer.eos_token, "USER:"]
    assert [m.id for m in served.client.models.list().data] == ["lora-run"]
    assert served.client.models.retrieve("lora-run").id == "lora-run"


def test_chat_equals_the_in_process_backend(served, loaded):
    reply = served.client.chat.completions.create(model="lora-run", messages=user(QUESTIONS[0]), max_tokens=GEN,
                                                  temperature=0)
    expected = in_process(loaded).chat([user(QUESTIONS[0])], max_new_tokens=GEN, temperature=0.0)[0]
    choice = reply.choices[0]
    assert choice.message.content == expected and choice.message.role == "assistant" and expected
    prompt = loaded.render(user(QUESTIONS[0]))
    assert prompt.endswith(f"USER: {QUESTIONS[0]} ASSISTANT:")
    assert reply.usage.prompt_tokens == len(loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert 1 <= reply.usage.completion_tokens <= GEN
    assert (choice.finish_reason == "length") == (reply.usage.completion_tokens == GEN)


def test_streaming_chat_equals_non_streaming(served):
    kw = {"model": "lora-run", "messages": user(QUESTIONS[1]), "max_tokens": GEN, "temperature": 0}
    whole = served.client.chat.completions.create(**kw)
    chunks = list(served.client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # token-sized pieces
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_raw_sse_framing(served):
    with httpx.stream("POST", served.http.base_url + "/chat/completions", timeout=60,
                      json={"model": "lora-run", "messages": user("hi"), "max_tokens": 3, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        body = r.read().decode()
    events = body.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])


def test_completions_list_and_streaming(served, loaded):
    prompts = ["the city of", "how many apples"]
    reply = served.client.completions.create(model="lora-run", prompt=prompts, max_tokens=GEN, temperature=0)
    expected = in_process(loaded).complete(prompts, max_new_tokens=GEN, temperature=0.0)
    assert [c.text for c in sorted(reply.choices, key=lambda c: c.index)] == expected
    assert reply.usage.prompt_tokens == sum(len(loaded.tokenizer(p)["input_ids"]) for p in prompts)  # with BOS
    streamed = served.client.completions.create(model="lora-run", prompt=prompts[0], max_tokens=GEN, temperature=0,
                                                stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected[0]
    default = served.client.completions.create(model="lora-run", prompt=prompts[0], temperature=0)
    assert default.usage.completion_tokens <= 16  # the OpenAI default max_tokens of /v1/completions


def test_n_with_a_seed_reproduces(served):
    def sample(seed: int) -> list[str]:
        reply = served.client.chat.completions.create(model="lora-run", messages=user(QUESTIONS[2]), n=2, seed=seed,
                                                      temperature=1.0, top_p=0.95, max_tokens=GEN)
        return [c.message.content for c in sorted(reply.choices, key=lambda c: c.index)]

    first = sample(7)
    assert len(first) == 2 and first[0] != first[1]
    assert sample(7) == first
    assert sample(8) != first


def test_stop_strings(served):
    kw = {"model": "lora-run", "messages": user(QUESTIONS[3]), "max_tokens": GEN, "temperature": 0}
    full = served.client.chat.completions.create(**kw).choices[0].message.content
    at = next(k for k in range(1, len(full) - 1) if full[k:k + 2].isascii() and full[k:k + 2].strip())
    stop = full[at:at + 2]
    for value in (stop, [stop, "never-seen"]):
        reply = served.client.chat.completions.create(**kw, stop=value)
        assert reply.choices[0].message.content == cut_at_stop(full, [stop]) == full[:full.find(stop)]
        assert reply.choices[0].finish_reason == "stop"


BAD_BODIES = [
    ({"messages": user("x")}, 400, "model"),  # missing field
    ({"model": "lora-run"}, 400, "messages"),
    ({"model": "lora-run", "messages": []}, 400, "messages"),
    ({"model": "lora-run", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
    ({"model": "lora-run", "messages": "hello"}, 400, "messages"),
    ({"model": "lora-run", "messages": user("x"), "temperature": 2.5}, 400, "temperature"),
    ({"model": "lora-run", "messages": user("x"), "top_p": 0}, 400, "top_p"),
    ({"model": "lora-run", "messages": user("x"), "n": 0}, 400, "n"),
    ({"model": "lora-run", "messages": user("x"), "n": 9}, 400, "n"),  # more than --max-batch
    ({"model": "lora-run", "messages": user("x"), "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "lora-run", "messages": user("x"), "max_tokens": 600}, 400, "max_tokens"),  # context is 512
    ({"model": "lora-run", "messages": user("x"), "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": "lora-run", "messages": user("x"), "logprobs": True}, 400, None),
    ({"model": "lora-run", "messages": user("x"), "frequency_penalty": 0.5}, 400, "frequency_penalty"),
    ({"model": "lora-run", "messages": user("x"), "surprise": 1}, 400, "surprise"),
    ({"model": "lora-run", "messages": [*user("x"), {"role": "assistant", "content": "y"}]}, 400, None),
    ({"model": "other", "messages": user("x")}, 404, "model"),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD_BODIES)
def test_bad_requests_get_openai_errors(served, body, status, param):
    r = served.post("/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"]
    if param is not None:
        assert err["param"] == param and err["message"].startswith(f"{param}:")
    assert served.client.chat.completions.create(model="lora-run", messages=user("still up?"), max_tokens=2)


def test_other_bad_input_and_the_client_errors(served):
    r = served.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = served.post("/completions", json={"model": "lora-run", "prompt": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = served.post("/nowhere", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    with pytest.raises(openai.NotFoundError) as err:
        served.client.chat.completions.create(model="gpt-9", messages=user("x"))
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        served.client.completions.create(model="lora-run", prompt="x " * 120, max_tokens=450)
    assert err.value.body["code"] == "context_length_exceeded" and "512" in err.value.body["message"]


def test_concurrent_requests_share_generate_calls_and_match_alone(served, loaded):
    before = served.stats()
    answers: dict[int, str] = {}
    barrier = threading.Barrier(len(QUESTIONS))

    def ask(i: int) -> None:
        barrier.wait()
        reply = served.client.chat.completions.create(model="lora-run", messages=user(QUESTIONS[i]), max_tokens=GEN,
                                                      temperature=0)
        answers[i] = reply.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(QUESTIONS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    after = served.stats()
    calls = after["generate_calls"] - before["generate_calls"]
    assert len(answers) == len(QUESTIONS) and after["requests"] - before["requests"] == len(QUESTIONS)
    assert calls < len(QUESTIONS) and after["max_requests_per_call"] >= 2
    # greedy: the same text batched (left-padded next to other prompts) as alone
    alone = in_process(loaded)
    assert [answers[i] for i in range(len(QUESTIONS))] == [
        alone.chat([user(q)], max_new_tokens=GEN, temperature=0.0)[0] for q in QUESTIONS]


class Gate:
    """A `generate_details` stand-in: prompts holding `BOOM` raise, prompts holding `HOLD` wait for `release`."""

    def __init__(self, real):
        self.real, self.release, self.holding = real, threading.Event(), threading.Semaphore(0)

    def __call__(self, model, tokenizer, prompts, **kwargs):
        if any("BOOM" in p for p in prompts):
            raise RuntimeError("injected failure")
        if any("HOLD" in p for p in prompts):
            self.holding.release()
            assert self.release.wait(timeout=60)
        return self.real(model, tokenizer, prompts, **kwargs)


def test_a_failing_generate_call_fails_only_its_requests(loaded, monkeypatch):
    monkeypatch.setattr(engine_module, "generate_details", Gate(engine_module.generate_details))
    with Served(loaded) as s:
        r = s.post("/chat/completions", json={"model": "lora-run", "messages": user("BOOM"), "max_tokens": 2})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "injected failure" in r.json()["error"]["message"]
        ok = s.client.chat.completions.create(model="lora-run", messages=user("fine"), max_tokens=2)
        assert ok.choices[0].finish_reason in ("stop", "length")
        assert s.stats()["failed_calls"] == 1 and s.stats()["errors"] == 1


def wait_for(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_request_cap_answers_429_and_the_rest_completes(loaded, monkeypatch):
    gate = Gate(engine_module.generate_details)
    monkeypatch.setattr(engine_module, "generate_details", gate)
    with Served(loaded, max_concurrent=2) as s:
        body = {"model": "lora-run", "messages": user("HOLD"), "max_tokens": 2}
        codes: list[int] = []
        threads = [threading.Thread(target=lambda m=m: codes.append(
            s.post("/chat/completions", json={**body, "messages": user(m)}).status_code)) for m in ("HOLD", "next")]
        threads[0].start()
        assert gate.holding.acquire(timeout=30)  # the worker is inside generate with the first request
        threads[1].start()
        wait_for(lambda: s.stats()["in_flight"] == 2)
        busy = s.post("/chat/completions", json=body)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "rate_limit_exceeded"
        gate.release.set()
        for t in threads:
            t.join(timeout=30)
        assert codes == [200, 200]
        ok = s.client.chat.completions.create(model="lora-run", messages=user("after"), max_tokens=2)
        assert ok.choices and s.stats()["rejected_busy"] == 1


def test_timeout_answers_504_and_drops_the_queued_request(loaded, monkeypatch):
    gate = Gate(engine_module.generate_details)
    monkeypatch.setattr(engine_module, "generate_details", gate)
    with Served(loaded, timeout_s=1.0) as s:
        codes: list[int] = []
        held = threading.Thread(target=lambda: codes.append(s.post(
            "/chat/completions", json={"model": "lora-run", "messages": user("HOLD"), "max_tokens": 2}).status_code))
        held.start()
        assert gate.holding.acquire(timeout=30)
        queued = s.post("/chat/completions", json={"model": "lora-run", "messages": user("queued"), "max_tokens": 2})
        assert queued.status_code == 504 and queued.json()["error"]["code"] == "timeout"
        held.join(timeout=30)
        assert codes == [504]  # its generate call is still running: a timeout does not interrupt one
        gate.release.set()
        ok = s.client.chat.completions.create(model="lora-run", messages=user("after"), max_tokens=2)
        assert ok.choices
        stats = s.stats()
        assert stats["timeouts"] == 2 and stats["cancelled"] == 1  # the queued one never reached generate


@pytest.mark.parametrize("kind", ["lora", "loramoe", "prefix", "prompt", "bottleneck"])
def test_every_adapter_kind_serves_like_in_process(kind, tmp_path, base_dir):
    from test_export import adapted_run

    run_dir, _ = adapted_run(tmp_path, base_dir, kind)  # no config.yaml: the tokenizer's own template
    loaded = load_served(run_dir)
    assert loaded.template == "tokenizer" and loaded.template_why.startswith("the checkpoint tokenizer's")
    convs = [user(q) for q in QUESTIONS[:3]]
    expected = in_process(loaded).chat(convs, max_new_tokens=6, temperature=0.0)
    engine = BatchEngine(loaded, max_batch=4, window_s=0.2)
    try:
        with ThreadedServer(create_app(loaded, engine, "m")) as server:
            replies: dict[int, str] = {}

            def ask(i: int) -> None:
                r = httpx.post(server.base_url + "/chat/completions", timeout=60, json={
                    "model": "m", "messages": convs[i], "max_tokens": 6, "temperature": 0})
                replies[i] = r.json()["choices"][0]["message"]["content"]

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
    finally:
        engine.close()
    assert [replies[i] for i in range(3)] == expected and any(expected)
    assert engine.snapshot()["generate_calls"] < 3  # batched, padded rows included (prefix/prompt tuning too)
