"""`mixtune data decontaminate`: n-gram index known answers, planted benchmark items flagged, clean ones untouched."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mixtune.config import WorldConfig
from mixtune.data.cli import main as data_main
from mixtune.data.decontam import NgramIndex
from mixtune.evaluate.contamination import contamination_report, item_texts
from mixtune.evaluate.registry import get_task
from mixtune.world.build import generate_world

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
FOX = "the quick brown fox jumps over the lazy dog near the old river bank today"  # 15 words


def run(capsys, *argv: str) -> tuple[int, dict | None, str]:
    rc = data_main(list(argv))
    out, err = capsys.readouterr()
    return rc, (json.loads(out.strip().splitlines()[-1]) if rc == 0 else None), err


def removed(out: Path) -> list[dict]:
    return [json.loads(line) for line in Path(str(out) + ".removed.jsonl").read_text().splitlines()]


def filler(seed: int, n: int = 40) -> str:
    rng = random.Random(seed)
    return " ".join(f"z{rng.randint(0, 10**6)}" for _ in range(n))


def test_index_known_answers():
    index = NgramIndex([("b", "fox", FOX), ("b", "short9", "alpha beta gamma delta epsilon zeta eta theta iota"),
                        ("b", "tiny", "one two three four five")], n=13, min_n=8)
    assert index.stats.items == 3 and index.stats.too_short == 1
    words = FOX.split()
    hit = index.matches(f"{filler(1)} {' '.join(words[1:14]).upper()}, {filler(2)}")  # 13 words, case changed
    assert [(m["item_id"], m["ngram"], m["overlap_words"], m["span"]) for m in hit] == [
        ("fox", 13, 13, " ".join(words[1:14]))]
    assert index.matches(f"{filler(3)} {' '.join(words[:12])} {filler(4)}") == []  # 12 words: no 13-gram
    assert index.matches(f"{filler(5)} {FOX} {filler(6)}")[0]["overlap_words"] == 15
    # a 9-word item uses n = 9: its whole text must appear
    assert [m["item_id"] for m in index.matches("x alpha beta gamma delta epsilon zeta eta theta iota y")] == ["short9"]
    assert index.matches("alpha beta gamma delta epsilon zeta eta theta") == []
    assert index.matches("one two three four five six") == []  # too short to index


def test_planted_gsm8k_and_humaneval_items_are_flagged(tmp_path, capsys):
    gsm = get_task("gsm8k", data_dir=str(DATA)).examples()
    he = get_task("humaneval", data_dir=str(DATA)).examples()
    rows = [{"id": f"clean/{i}", "text": filler(100 + i)} for i in range(30)]
    planted = {3: ("gsm8k", gsm[17]), 11: ("gsm8k", gsm[1000]), 20: ("humaneval", he[5])}
    for pos, (_, ex) in planted.items():
        text = ex["question"] if "question" in ex else ex["prompt"] + ex["canonical_solution"]
        rows[pos] = {"id": f"leak/{pos}", "text": f"Some intro words here. {text} Thanks!"}
    src = tmp_path / "sft.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    rc, summary, _ = run(capsys, "decontaminate", str(src), "--out", str(out), "--data-dir", str(DATA))
    assert rc == 0
    assert (summary["input"], summary["kept"], summary["flagged"]) == (30, 30, 3)
    assert summary["by_benchmark"]["gsm8k"] == 2 and summary["by_benchmark"]["humaneval"] == 1
    flags = removed(out)
    assert [(f["index"], f["benchmark"], f["item_id"], f["action"]) for f in flags] == [
        (pos, bench, ex["task_id"], "flagged") for pos, (bench, ex) in planted.items()]
    assert out.read_bytes() == src.read_bytes()  # flagging keeps every record as it was
    rc, summary, _ = run(capsys, "decontaminate", str(src), "--out", str(out), "--data-dir", str(DATA), "--drop",
                         "--against", "gsm8k")
    assert rc == 0 and (summary["kept"], summary["flagged"]) == (28, 2)
    src_lines = src.read_text().splitlines()
    assert out.read_text().splitlines() == [src_lines[i] for i in range(30) if i not in (3, 11)]


def test_minilab_held_out_items_planted_in_sft(tmp_path, capsys):
    world = tmp_path / "world"
    generate_world(WorldConfig(seed=3, n_people=20, bio_exposures=1, math_train=40, math_test=20, code_train=30,
                               code_test=10, instruct_train=40, instruct_test=10, knowledge_test=10, pretrain_math=10,
                               pretrain_code=10, pretrain_text=10), world, progress=False)
    bench = [json.loads(line) for line in (world / "bench" / "math_test.jsonl").read_text().splitlines()]
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": filler(i)},
                                         {"role": "assistant", "content": filler(50 + i)}]} for i in range(10)]
    rows[4]["messages"][0]["content"] = bench[2]["question"]
    src = tmp_path / "sft.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    rc, summary, _ = run(capsys, "decontaminate", str(src), "--out", str(out), "--against",
                         "minilab_math,minilab_code,minilab_instruct,minilab_knowledge", "--world-dir", str(world))
    assert rc == 0 and summary["format"] == "messages" and summary["flagged"] >= 1
    assert any(f["item_id"] == bench[2]["task_id"] and f["id"] == "r4" for f in removed(out))


def test_contamination_report_for_a_study():
    gsm = get_task("gsm8k", data_dir=str(DATA)).examples()
    sources = {
        "math": [{"id": "m0", "messages": [{"role": "user", "content": gsm[7]["question"]},
                                           {"role": "assistant", "content": "42"}]},
                 {"id": "m1", "messages": [{"role": "user", "content": filler(9)},
                                           {"role": "assistant", "content": "1"}]}],
        "text": [{"id": "t0", "text": filler(10)}],
    }
    report = contamination_report(sources, against=["gsm8k", "mbpp"], data_dir=str(DATA))
    assert report["sources"]["math"]["records"] == 2 and report["sources"]["math"]["flagged"] == 1
    assert report["sources"]["math"]["by_benchmark"] == {"gsm8k": 1, "mbpp": 0}
    assert report["sources"]["math"]["flagged_ids"]["m0"]["item_id"] == gsm[7]["task_id"]
    assert report["sources"]["text"]["flagged"] == 0


def test_item_texts_cover_prompts_and_references():
    ex = get_task("gsm8k", data_dir=str(DATA)).examples()[0]
    assert item_texts(ex) == [ex["question"], ex["answer"]]
    mt = get_task("mt_bench", data_dir=str(DATA)).examples()[0]
    assert set(mt["turns"]) <= set(item_texts(mt))


@pytest.mark.parametrize("argv,needle", [(["--against", "gsm9k"], "unknown task 'gsm9k'"),
                                         (["--data-dir", "/nonexistent"], "not found")])
def test_bad_benchmark_names_and_folders_exit_2(tmp_path, capsys, argv, needle):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "hello"}) + "\n")
    rc, _, err = run(capsys, "decontaminate", str(src), "--out", str(tmp_path / "o.jsonl"), *argv)
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_real_files(tmp_path, capsys):
    rc, summary, _ = run(capsys, "decontaminate", str(DATA / "gsm8k" / "train.jsonl"), "--out",
                         str(tmp_path / "g.jsonl"), "--data-dir", str(DATA))
    assert rc == 0 and summary["input"] == 7473 and summary["flagged"] == summary["by_benchmark"]["gsm8k"] > 0
