"""A scripted OpenAI-compatible model on loopback for the self-instruct test (built on the judge server).

A prompt holding Alpaca's "List of 20 tasks" gets `GENERATION` (six candidates, each meant to meet one rule); any
other prompt gets "Answer: <the prompt's first line>".
"""

from __future__ import annotations

from judge_server import JudgeServer

GOOD = ("Give three tips for staying healthy during the winter season.",
        "Translate the following sentence into French for me please.")
SEED_COPY = ("Is there anything I can eat for a breakfast that doesn't include eggs, yet includes protein, and has "
             "roughly 700-1000 calories?")
GENERATION = f""" {GOOD[0]}
4. Input:
<noinput>
4. Output:
Sleep, eat vegetables and walk every day.
###
5. Instruction: Draw a picture of a cat sitting on a mat.
5. Input:
<noinput>
5. Output:
(no output)
###
6. Instruction: Say hi
6. Input:
<noinput>
6. Output:
hi
###
7. Instruction: "Quote this sentence back to me exactly as written."
7. Input:
<noinput>
7. Output:
ok
###
8. Instruction: {SEED_COPY}
8. Input:
<noinput>
8. Output:
Oatmeal.
###
9. Instruction: {GOOD[1]}
9. Input:
The weather is nice today.
9. Output:
Il fait beau aujourd'hui.
###
10. Instruction:"""


class SynthServer(JudgeServer):
    def respond(self, body: dict) -> tuple[int, dict, dict]:
        user = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
        text = user[-1] if user else ""
        content = GENERATION if "List of 20 tasks" in text else "Answer: " + text.splitlines()[0]
        reply = {"id": "chatcmpl-synth", "object": "chat.completion", "model": body.get("model"),
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                              "finish_reason": "stop"}]}
        return 200, reply, {}
