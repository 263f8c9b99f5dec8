"""Sources read through HF `datasets`: parquet, csv, save_to_disk folders, LLaMA-Factory dataset_info.json entries,
folders of files, and streaming draws; bad rows name their file, 0-based row and field."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, DatasetDict

from mixtune.config import SourceConfig
from mixtune.data.formats import DataError
from mixtune.data.hf_sources import read_source, source_size
from mixtune.data.mixture import MixtureError, draw_mixture

ROWS = [{"instruction": f"Add {i} and {i + 1}.", "input": "" if i % 2 else "Show the sum.",
         "output": f"{i} + {i + 1} = {2 * i + 1}"} for i in range(12)]


def user_texts(result) -> list[str]:
    return [ex["messages"][0]["content"] for ex in result.examples]


def test_parquet_and_csv_read_as_alpaca(tmp_path):
    Dataset.from_list(ROWS).to_parquet(str(tmp_path / "d.parquet"))
    Dataset.from_list(ROWS).to_csv(str(tmp_path / "d.csv"), index=False)  # csv: empty input cells read as null
    for name in ("d.parquet", "d.csv"):
        res = read_source(tmp_path / name, format="alpaca", source="add", ability="math")
        assert res.format == "alpaca" and res.position == "0-based rows" and len(res.examples) == 12
        assert user_texts(res)[:2] == ["Add 0 and 1.\n\nShow the sum.", "Add 1 and 2."]
        assert res.examples[3]["messages"][1]["content"] == "3 + 4 = 7"
        assert res.examples[3]["id"] == "add/3" and res.examples[3]["ability"] == "math"
    assert source_size(tmp_path / "d.parquet") == 12 and source_size(tmp_path / "d.csv") is None


def test_a_bad_parquet_row_names_its_row_index_and_field(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[4]["output"] = None  # a null cell: the field is missing
    rows[7]["instruction"] = "   "
    Dataset.from_list(rows).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError) as err:
        read_source(tmp_path / "bad.parquet")  # format detected: alpaca
    path = tmp_path / "bad.parquet"
    assert err.value.problems == [f"{path}: row 4: output: missing", f"{path}: row 7: instruction: empty"]
    assert str(err.value).startswith(f"{path}: 2 invalid record(s) of 12 (alpaca format; numbers are 0-based rows)")
    res = read_source(path, skip_invalid=True)
    assert len(res.examples) == 10 and res.skipped == err.value.problems


def test_save_to_disk_folders_dataset_and_dataset_dict(tmp_path):
    chats = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]}
             for i in range(5)]
    Dataset.from_list(chats).save_to_disk(str(tmp_path / "one"))
    DatasetDict({"train": Dataset.from_list(chats[:3]), "test": Dataset.from_list(chats[3:])}).save_to_disk(
        str(tmp_path / "dict"))
    assert user_texts(read_source(tmp_path / "one")) == [f"hi {i}" for i in range(5)]
    assert user_texts(read_source(tmp_path / "dict")) == ["hi 0", "hi 1", "hi 2"]  # default split: train
    assert user_texts(read_source(tmp_path / "dict", split="test")) == ["hi 3", "hi 4"]
    with pytest.raises(DataError, match="no split 'valid'; splits: train, test"):
        read_source(tmp_path / "dict", split="valid")
    assert source_size(tmp_path / "one") == 5 and source_size(tmp_path / "dict", split="test") == 2


def llamafactory_folder(tmp_path):
    """A LLaMA-Factory data folder: an alpaca entry with renamed columns and history, a sharegpt entry in OpenAI
    style tags (role / content / user / assistant), and a hub entry."""
    folder = tmp_path / "lf"
    folder.mkdir()
    (folder / "qa.json").write_text(json.dumps([
        {"question": "2+2?", "context": "", "reply": "4", "sys": "Be brief.", "hist": [["hi", "hello"]]},
        {"question": "3+3?", "context": "Think.", "reply": "6", "sys": "", "hist": []}]))
    Dataset.from_list([{"msgs": [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]},
                       {"msgs": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}]
                      ).to_parquet(str(folder / "chat.parquet"))
    (folder / "dataset_info.json").write_text(json.dumps({
        "qa": {"file_name": "qa.json", "columns": {"prompt": "question", "query": "context", "response": "reply",
                                                   "system": "sys", "history": "hist"}},
        "chat": {"file_name": "chat.parquet", "formatting": "sharegpt", "columns": {"messages": "msgs"},
                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                          "assistant_tag": "assistant"}},
        "hub": {"hf_hub_url": "someone/data"}}))
    return folder


def test_dataset_info_entries_with_their_column_and_tag_mappings(tmp_path):
    folder = llamafactory_folder(tmp_path)
    qa = read_source(folder, dataset_info="qa")
    assert qa.format == "alpaca" and qa.examples[0]["source"] == "qa"
    assert qa.examples[0]["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}]
    assert qa.examples[1]["messages"] == [{"role": "user", "content": "3+3?\n\nThink."},
                                          {"role": "assistant", "content": "6"}]
    same = read_source(f"{folder}/dataset_info.json#qa")
    assert [e["messages"] for e in same.examples] == [e["messages"] for e in qa.examples]
    with pytest.raises(DataError) as err:
        read_source(folder / "dataset_info.json", dataset_info="chat")
    assert err.value.problems == [(f"{folder / 'chat.parquet'}: row 1: msgs[1].role: role 'robot' is not one of "
                                   "the entry's tags ['assistant', 'system', 'user']")]
    chat = read_source(folder, dataset_info="chat", skip_invalid=True)
    assert chat.format == "sharegpt" and chat.examples[0]["messages"][1] == {"role": "assistant", "content": "pong"}
    with pytest.raises(DataError, match="holds 3 entries; name one with dataset_info: NAME"):
        read_source(folder)
    with pytest.raises(DataError, match="entry 'hub' cannot be read: it points to a hub \\(hf_hub_url\\)"):
        read_source(folder, dataset_info="hub")
    with pytest.raises(DataError, match="no entry 'nope'; entries: chat, hub, qa"):
        read_source(folder, dataset_info="nope")


def test_folders_of_files_and_an_empty_folder(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:3]))
    Dataset.from_list(ROWS[3:5]).to_parquet(str(tmp_path / "b.parquet"))
    res = read_source(tmp_path, source="mixed")
    assert user_texts(res) == [user_texts(read_source(tmp_path / "a.jsonl"))[i] for i in range(3)] + [
        "Add 3 and 4.", "Add 4 and 5.\n\nShow the sum."]
    assert len({ex["id"] for ex in res.examples}) == 5  # ids count records across the folder's files
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="a folder with no data file"):
        read_source(tmp_path / "empty")


def test_streaming_draw_equals_the_in_memory_draw_and_needs_a_declared_size(tmp_path):
    Dataset.from_list(ROWS).to_parquet(str(tmp_path / "d.parquet"))
    Dataset.from_list(ROWS).to_csv(str(tmp_path / "d.csv"), index=False)

    def draw(path, streaming, **amount):
        src = SourceConfig(name="s", path=str(path), streaming=streaming, **amount)
        return draw_mixture([src], tmp_path, seed=3, log=lambda _: None)

    for amount in ({"count": 5}, {"fraction": 0.5, "eval_count": 2}):
        streamed, memory = draw(tmp_path / "d.parquet", True, **amount), draw(tmp_path / "d.parquet", False, **amount)
        assert [e["id"] for e in streamed.train] == [e["id"] for e in memory.train]
        assert streamed.manifest["s"]["ids"] == memory.manifest["s"]["ids"]
        assert streamed.manifest["s"]["eval_ids"] == memory.manifest["s"]["eval_ids"]
        assert streamed.manifest["s"]["streamed"] and "_index" not in streamed.train[0]
    with pytest.raises(MixtureError, match="streaming: true with count .* needs the number of records up front"):
        draw(tmp_path / "d.csv", True, count=5)
    assert len(draw(tmp_path / "d.csv", True).train) == 12  # everything: no size needed
