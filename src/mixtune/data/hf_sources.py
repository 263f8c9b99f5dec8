"""Data sources read through Hugging Face `datasets`: parquet, csv and arrow files, folders of data files,
`save_to_disk` folders, and LLaMA-Factory `dataset_info.json` entries.

`open_records(path, ...)` yields every record as `(where, record, problem)`, where `where` names the record the way a
user finds it: `file:line` for line-based files (JSONL, JSON lists: read by `formats.iter_records`, which keeps line
numbers) and `file: row N` (0-based, as `dataset[N]`) for columnar ones, which `datasets` reads in streaming mode
(no copy into a cache, memory independent of the file size). A null cell is a missing field (columnar files give
every row every column). The records then go through the same converters and validation as every other source.

`source_size` is the number of records when the files declare it (parquet metadata, arrow files, `save_to_disk`
folders); a streaming source drawn by count, fraction or ratio needs it (`data/mixture.py`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixtune.data import llamafactory
from mixtune.data.formats import DataError, ReadResult, convert_records, iter_records

COLUMNAR = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
"""File suffix -> the `datasets` builder that reads it."""
LINE_BASED = (".jsonl", ".json", ".gz")
DATA_SUFFIXES = (*LINE_BASED, *COLUMNAR)
HF_DISK_MARKERS = ("state.json", "dataset_dict.json")
"""Files `Dataset.save_to_disk` / `DatasetDict.save_to_disk` write (a LLaMA-Factory folder has neither)."""


@dataclass
class Records:
    """The records of a source, lazily: `rows` yields (where, record or None, problem or None)."""

    rows: Iterator[tuple[str, Any, str | None]]
    position: str
    """What `where` counts: "1-based lines" / "1-based items" (line-based files) or "0-based rows" (columnar)."""
    format: str | None = None
    """A format implied by the source (a LLaMA-Factory entry's formatting), else None."""
    convert: Callable[[dict], dict] | None = None
    """The converter that source implies (a LLaMA-Factory entry's column and tag mapping), else None."""


def _offline() -> None:
    # Local files only: `datasets` must never look for a hub copy (no network in tests, none needed here).
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _no_nulls(rec: Any) -> Any:
    return {k: v for k, v in rec.items() if v is not None} if isinstance(rec, dict) else rec


def _line_rows(path: Path) -> tuple[str, Iterator[tuple[str, Any, str | None]]]:
    position, rows = iter_records(path)
    return f"1-based {position}s", ((f"{path}:{n}", rec, bad) for n, rec, bad in rows)


def _columnar_rows(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    _offline()
    from datasets import load_dataset

    try:
        stream = load_dataset(COLUMNAR[path.suffix], data_files=str(path), split="train", streaming=True)
        for i, rec in enumerate(stream):
            yield f"{path}: row {i}", _no_nulls(rec), None
    except (ValueError, OSError, TypeError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: cannot be read as {COLUMNAR[path.suffix]} ({type(e).__name__}: {e})") from None


def _disk_rows(folder: Path, split: str | None) -> Iterator[tuple[str, Any, str | None]]:
    for i, rec in enumerate(_load_disk(folder, split)):
        yield f"{folder}: row {i}", _no_nulls(rec), None


def _load_disk(folder: Path, split: str | None):
    """A `save_to_disk` folder as a memory-mapped Dataset (a DatasetDict's `split`, default train)."""
    _offline()
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(str(folder))
    if isinstance(data, DatasetDict):
        split = split or "train"
        if split not in data:
            raise DataError(f"{folder}: no split {split!r}; splits: {', '.join(data)} (set split: NAME on the source)")
        data = data[split]
    return data


def data_files(folder: Path) -> list[Path]:
    """The data files of a plain folder (sorted; hidden files skipped)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.endswith(DATA_SUFFIXES))


def _file_rows(path: Path) -> tuple[str, Iterator[tuple[str, Any, str | None]]]:
    if path.suffix in COLUMNAR:
        return "0-based rows", _columnar_rows(path)
    return _line_rows(path)


def _folder_rows(folder: Path) -> tuple[str, Iterator[tuple[str, Any, str | None]]]:
    files = data_files(folder)
    if not files:
        raise DataError(f"{folder}: a folder with no data file ({', '.join(DATA_SUFFIXES)}), no "
                        f"{llamafactory.INFO_NAME} and no save_to_disk files; give a data file or such a folder")
    opened = [_file_rows(f) for f in files]
    positions = sorted({p for p, _ in opened})
    return " and ".join(positions), (row for _, rows in opened for row in rows)


def open_records(path: str | Path, dataset_info: str | None = None, split: str | None = None) -> Records:
    """The records of any supported source (see the module docstring); DataError for what cannot be read."""
    path, name = llamafactory.split_info_path(path)
    name = dataset_info or name
    if path.is_dir() and (path / llamafactory.INFO_NAME).is_file() and not _is_hf_disk(path):
        path = path / llamafactory.INFO_NAME
    if path.name == llamafactory.INFO_NAME and path.is_file() and not _is_hf_disk(path.parent):
        _, entry = llamafactory.load_entry(path, name)
        fmt, convert = llamafactory.entry_converter(entry)
        inner = open_records(llamafactory.entry_data_path(path, entry), split=split or entry.get("split"))
        return Records(inner.rows, inner.position, fmt, convert)
    if name is not None:
        raise DataError(f"{path}: dataset_info {name!r} given, but there is no {llamafactory.INFO_NAME} there")
    if not path.exists():
        raise DataError(f"{path}: data file not found; fix the source's path")
    if path.is_dir():
        if _is_hf_disk(path):
            return Records(_disk_rows(path, split), "0-based rows")
        position, rows = _folder_rows(path)
        return Records(rows, position)
    if not path.name.endswith(DATA_SUFFIXES):
        raise DataError(f"{path}: unknown file type; supported: {', '.join(DATA_SUFFIXES)} "
                        "(or a folder of them, a save_to_disk folder, a LLaMA-Factory dataset_info.json)")
    position, rows = _file_rows(path)
    return Records(rows, position)


def _is_hf_disk(folder: Path) -> bool:
    return any((folder / m).is_file() for m in HF_DISK_MARKERS)


def source_size(path: str | Path, dataset_info: str | None = None, split: str | None = None) -> int | None:
    """Number of records the source declares without being read (parquet metadata, arrow files, save_to_disk
    folders, and LLaMA-Factory entries over those); None for csv / JSON / JSONL, which must be read to count."""
    path, name = llamafactory.split_info_path(path)
    if path.is_dir() and (path / llamafactory.INFO_NAME).is_file() and not _is_hf_disk(path):
        path = path / llamafactory.INFO_NAME
    if path.name == llamafactory.INFO_NAME and path.is_file():
        _, entry = llamafactory.load_entry(path, dataset_info or name)
        return source_size(llamafactory.entry_data_path(path, entry), split=split or entry.get("split"))
    if path.is_dir():
        if _is_hf_disk(path):
            return len(_load_disk(path, split))
        sizes = [source_size(f) for f in data_files(path)]
        return None if not sizes or None in sizes else sum(sizes)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_metadata(str(path)).num_rows
    if path.suffix == ".arrow":
        import pyarrow as pa

        with pa.memory_map(str(path)) as source:
            return sum(batch.num_rows for batch in pa.ipc.open_stream(source))
    return None


def read_source(path: str | Path, format: str = "auto", source: str | None = None, ability: str | None = None,
                task_type: int | None = None, skip_invalid: bool = False, *, dataset_info: str | None = None,
                split: str | None = None, columns: dict[str, str] | None = None,
                keep: set[int] | None = None) -> ReadResult:
    """Read and validate a source of any supported kind (`formats.convert_records`: the same converters, checks,
    ids and messages as `formats.read_examples`). A LLaMA-Factory entry brings its own converter (its formatting,
    columns and tags); `format` must then be auto or that formatting."""
    records = open_records(path, dataset_info, split)
    if records.convert is not None and format not in ("auto", records.format):
        raise DataError(f"{path}: the dataset_info entry has formatting {records.format}, but the source says "
                        f"format: {format}; drop format: (the entry's mapping is used)")
    file, name = llamafactory.split_info_path(path)
    return convert_records(records.rows, str(path), records.position, records.format or format,
                           source or name or dataset_info or file.name.split(".")[0], ability, task_type,
                           skip_invalid, convert=records.convert, columns=columns, keep=keep)
