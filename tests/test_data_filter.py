"""`mixtune data filter`: datatrove's rules on crafted documents, records unchanged, and the reference-model filter."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from mixtune.data.cli import main as data_main
from mixtune.model.reference_filter import length_batches, sequence_nll, sequence_topk_kl

GOOD = ("The village lies on the bank of a wide river, and most of the people who live there work on the farms "
        "around it. In the summer the fields are full of wheat and the children help with the harvest after school. "
        "There is a small market in the square every Saturday, where farmers sell bread, cheese and fresh vegetables. "
        "The old church at the end of the main street was built more than three hundred years ago. "
        "Visitors often walk along the river in the evening to watch the boats and the birds. "
        "Many families have lived in the same houses for several generations.")
SENTENCES = GOOD.split(". ")


def run(capsys, *argv: str) -> tuple[int, dict | None, str]:
    rc = data_main(list(argv))
    out, err = capsys.readouterr()
    return rc, (json.loads(out.strip().splitlines()[-1]) if rc == 0 else None), err


def removed(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, Path(str(out) + ".removed.jsonl").read_text().splitlines())}


def write(tmp_path: Path, rows: list[dict]) -> Path:
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


def crafted() -> list[dict]:
    good_lines = "\n".join(s.rstrip(".") + "." for s in SENTENCES)
    return [
        {"id": "good", "text": good_lines + "\nPlease enable JavaScript in your browser to see the map."},
        {"id": "short", "text": "Too short to be a real document of the web."},
        {"id": "repeated", "text": "\n".join(["Click here to buy cheap watches now."] * 12 + SENTENCES[:2])},
        {"id": "lorem", "text": good_lines + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit."},
        {"id": "curly", "text": good_lines + "\nThe function body is { return x; } in the example."},
        {"id": "symbols", "text": " ".join(["#tag"] * 30 + GOOD.split()[:40])},
    ]


def test_each_rule_on_crafted_documents(tmp_path, capsys):
    src = write(tmp_path, crafted())
    out = tmp_path / "kept.jsonl"
    rc, summary, _ = run(capsys, "filter", str(src), "--out", str(out), "--filters",
                         "gopher_quality,gopher_repetition,c4,fineweb")
    assert rc == 0
    gone = removed(out)
    assert {k: v["reason"] for k, v in gone.items()} == {
        "short": "gopher_quality:gopher_short_doc",
        "repeated": "gopher_repetition:dup_line_frac",
        "lorem": "c4:lorem_ipsum",
        "curly": "c4:curly_bracket",
        "symbols": "gopher_quality:gopher_too_many_hashes",
    }
    assert (summary["input"], summary["kept"], summary["removed"]) == (6, 1, 5)
    # C4QualityFilter drops the JavaScript line from doc.text; the record written is still the input line.
    assert out.read_text().splitlines() == [src.read_text().splitlines()[0]]


def test_thresholds_from_an_options_file_and_flags(tmp_path, capsys):
    src = write(tmp_path, crafted()[:2])
    opts = tmp_path / "filters.yaml"
    opts.write_text("filters: [gopher_quality]\ngopher_quality: {min_doc_words: 5}\n")
    out = tmp_path / "o.jsonl"
    rc, summary, _ = run(capsys, "filter", str(src), "--out", str(out), "--options", str(opts))
    assert rc == 0 and summary["kept"] == 2 and summary["settings"]["gopher_quality"] == {"min_doc_words": 5}
    rc, summary, _ = run(capsys, "filter", str(src), "--out", str(out), "--options", str(opts),
                         "--set", "gopher_quality.min_doc_words=50")
    assert rc == 0 and summary["kept"] == 1 and summary["by_reason"] == {"gopher_quality:gopher_short_doc": 1}
    rc, _, err = run(capsys, "filter", str(src), "--out", str(out), "--set", "c4.min_sentences=2")
    assert rc == 2 and "c4: unknown argument 'min_sentences'; valid: split_paragraph" in err
    rc, _, err = run(capsys, "filter", str(src), "--out", str(out), "--filters", "gopher,c4")
    assert rc == 2 and "unknown filter 'gopher'" in err


def test_nll_and_kl_hand_worked():
    logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens: NLL ln 4 at every position
    ids, mask = torch.tensor([[0, 1, 2]]), torch.tensor([[1, 1, 0]])  # the last position is padding
    assert sequence_nll(logits, ids, mask).item() == pytest.approx(math.log(4))
    logits[0, 0] = torch.tensor([0.0, math.log(3), 0.0, 0.0])  # p(token 1) = 3/6 after position 0
    assert sequence_nll(logits, ids, mask).item() == pytest.approx(math.log(2))
    # top-2 of the target at one position: tokens 0, 1 with p_t = (2/3, 1/3); the reference gives them (1/2, 1/2)
    target = torch.log(torch.tensor([[[2.0, 1.0, 0.001], [1.0, 1.0, 1.0]]]))
    ref = torch.zeros(1, 2, 3)
    kl = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    assert sequence_topk_kl(target, ref, torch.tensor([[1, 1]]), k=2).item() == pytest.approx(kl, rel=1e-3)
    assert length_batches([3, 10, 5, 9], batch_tokens=20) == [[1, 3], [2, 0]]


@pytest.fixture(scope="module")
def trained_dir(base_dir, tmp_path_factory):
    """The tiny base fitted for 40 steps to one text, so that text scores a much lower NLL than others."""
    from mixtune.model.load import load_checkpoint, load_tokenizer

    tok, model = load_tokenizer(base_dir), load_checkpoint(base_dir)
    ids = tok("the answer is 42 and the city is on the river", return_tensors="pt")["input_ids"]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("trained") / "final"
    model.save_pretrained(out)
    for f in Path(base_dir).glob("*token*"):
        shutil.copy(f, out / f.name)
    return out


def test_reference_filter_orders_by_nll(tmp_path, capsys, trained_dir):
    from mixtune.model.reference_filter import ReferenceScorer

    rows = [{"id": "seen", "text": "the answer is 42 and the city is on the river"},
            {"id": "noise", "text": "yes no books cost while print list major born at"},
            {"id": "long", "text": "how many apples " * 30}]
    src = write(tmp_path, rows)
    opts = {"model": str(trained_dir), "target": None, "score": "nll", "min": None, "max": None, "top_k": 20,
            "batch_tokens": 64, "max_len": 512}
    scorer = ReferenceScorer(opts)
    batched = scorer.score([r["text"] for r in rows])
    alone = [scorer.score([r["text"]])[0] for r in rows]
    assert batched == pytest.approx(alone, abs=1e-4)  # right padding and length batches change nothing
    assert batched[0] < 1.0 < batched[1]
    cut = (batched[0] + batched[1]) / 2
    out = tmp_path / "o.jsonl"
    rc, summary, _ = run(capsys, "filter", str(src), "--out", str(out), "--filters", "none", "--reference-model",
                         str(trained_dir), "--max-score", str(cut))
    assert rc == 0 and summary["reference_scored"] == 3
    kept_ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert kept_ids == ["seen"] + (["long"] if batched[2] <= cut else [])
    assert removed(out)["noise"]["reason"] == "reference:nll_out_of_band"


def test_reference_filter_kl_and_ppl_band(tmp_path, capsys, base_dir, trained_dir):
    src = write(tmp_path, [{"id": "a", "text": "the answer is 42 and the city is on the river"},
                           {"id": "b", "text": "please reply short note about the university"}])
    out = tmp_path / "o.jsonl"
    rc, summary, _ = run(capsys, "filter", str(src), "--out", str(out), "--filters", "none", "--reference-model",
                         str(base_dir), "--target-model", str(base_dir), "--score", "kl", "--max-score", "1e-6")
    assert rc == 0 and summary["kept"] == 2 and summary["reference_mean"] == pytest.approx(0.0, abs=1e-6)
    rc, summary, _ = run(capsys, "filter", str(src), "--out", str(out), "--filters", "none", "--reference-model",
                         str(base_dir), "--target-model", str(trained_dir), "--score", "kl", "--max-score", "1e-6")
    assert rc == 0 and summary["kept"] == 0 and summary["reference_mean"] > 0.01
    rc, summary, _ = run(capsys, "filter", str(src), "--out", str(out), "--filters", "none", "--reference-model",
                         str(trained_dir), "--score", "ppl", "--min-score", "1.0", "--max-score", "3.0")
    assert rc == 0 and [r["id"] for r in map(json.loads, out.read_text().splitlines())] == ["a"]
    rc, _, err = run(capsys, "filter", str(src), "--out", str(out), "--reference-model", str(tmp_path / "none"))
    assert rc == 2 and "no such folder" in err and err.count("\n") == 1
