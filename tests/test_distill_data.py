"""Parallel-sentence readers: JSONL, CSV / TSV, parquet and datasets (saved on disk, or local files through
load_dataset), each with broken rows that are skipped and counted by reason; languages from a column or LANG=path;
the English side for `vlt5r extract --texts`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foundations.errors import UserError
from multilingual.data import Columns, english_key, open_parallel, read_source, write_english_texts

ROWS = [{"english": "a red ring", "foreign": "ku tomo vela", "lang": "xx"},
        {"english": "a blue ring", "foreign": "ku tomo sira"},
        {"english": "a  blue\tring", "foreign": "ku tomo sira"},  # the same pair once whitespace is normalised
        {"english": "a green cross", "foreign": "   "},  # empty
        {"english": "a cross"},  # missing field
        {"english": 3, "foreign": "ka"},  # not text
        {"english": "a blue ring", "foreign": "un anneau bleu", "lang": "fr"}]
REASONS = {"duplicate pair": 1, "empty sentence": 1, "missing field": 1, "not text": 1}


def write_jsonl(path: Path) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in ROWS[:4]) + "\n{not json\n" +
                    "\n".join(json.dumps(r) for r in ROWS[4:]) + "\n")
    return path


def check(pairs: list, report, extra: dict[str, int] | None = None) -> None:
    assert [(p.english, p.foreign, p.lang) for p in pairs] == [
        ("a red ring", "ku tomo vela", "xx"), ("a blue ring", "ku tomo sira", "de"),
        ("a blue ring", "un anneau bleu", "fr")]
    expected = {**REASONS, **(extra or {})}
    assert dict(report.skipped) == {k: v for k, v in expected.items() if v}
    assert report.read == 3


def test_jsonl_with_bad_lines_and_a_language_per_file(tmp_path: Path) -> None:
    pairs, report = read_source(f"de={write_jsonl(tmp_path / 'p.jsonl')}", Columns())
    check(pairs, report, {"invalid JSON": 1})  # the lang column wins over de=


def test_csv_tsv_and_parquet(tmp_path: Path) -> None:
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = [r for r in ROWS if isinstance(r.get("english"), str)]
    for name, sep in (("p.csv", ","), ("p.tsv", "\t")):
        with (tmp_path / name).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, ["english", "foreign", "lang"], delimiter=sep)
            writer.writeheader()
            writer.writerows(table)
        pairs, report = read_source(f"de={tmp_path / name}", Columns())
        assert [p.foreign for p in pairs] == ["ku tomo vela", "ku tomo sira", "un anneau bleu"]
        assert dict(report.skipped) == {"duplicate pair": 1, "empty sentence": 2}  # a missing cell is empty
    pq.write_table(pa.Table.from_pylist([{**{"lang": None}, **r, "english": str(r.get("english"))} for r in ROWS
                                         if "foreign" in r]), tmp_path / "p.parquet")
    pairs, report = read_source(f"de={tmp_path / 'p.parquet'}", Columns())
    assert [(p.english, p.lang) for p in pairs] == [("a red ring", "xx"), ("a blue ring", "de"), ("3", "de"),
                                                    ("a blue ring", "fr")]  # parquet keeps types: 3 is text here
    assert dict(report.skipped) == {"duplicate pair": 1, "empty sentence": 1}
    with pytest.raises(UserError, match="needs columns 'en' and 'foreign'"):
        read_source(str(tmp_path / "p.csv"), Columns(english="en"))


def test_datasets_on_disk_and_local_files(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [r for r in ROWS if isinstance(r.get("english"), str) and "foreign" in r]
    data = datasets.Dataset.from_list([{"english": r["english"], "foreign": r["foreign"], "lang": r.get("lang")}
                                       for r in rows])
    data.save_to_disk(str(tmp_path / "saved"))
    pairs, report = read_source(f"de={tmp_path / 'saved'}", Columns())
    check(pairs, report, {"missing field": 0, "not text": 0})
    datasets.DatasetDict({"train": data, "validation": data.select([0])}).save_to_disk(str(tmp_path / "dict"))
    pairs, _ = read_source(str(tmp_path / "dict"), Columns(), split="validation")
    assert [p.english for p in pairs] == ["a red ring"]
    with pytest.raises(UserError, match="no split 'test'"):
        read_source(str(tmp_path / "dict"), Columns(), split="test")
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"english": r["english"], "foreign": r["foreign"]}) for r in rows) + "\n")
    pairs, report = read_source(str(path), Columns(), fmt="datasets")  # load_dataset("json", data_files=...)
    assert len(pairs) == 3 and report.skipped["duplicate pair"] == 1 and {p.lang for p in pairs} == {"und"}


def test_several_sources_and_the_english_side(tmp_path: Path) -> None:
    (tmp_path / "vi.jsonl").write_text(json.dumps({"english": "a red ring", "foreign": "mot vong do"}) + "\n")
    data = open_parallel([f"de={write_jsonl(tmp_path / 'p.jsonl')}", f"vi={tmp_path / 'vi.jsonl'}"])
    assert data.languages == ["de", "fr", "vi", "xx"] and len(data) == 4
    english = data.english()  # one key per distinct English sentence
    assert english == {english_key("a red ring"): "a red ring", english_key("a blue ring"): "a blue ring"}
    out = write_english_texts(english, tmp_path / "en.jsonl")
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"id": k, "text": v} for k, v in english.items()]
    with pytest.raises(UserError, match="no usable"):
        (tmp_path / "bad.jsonl").write_text('{"english": "x"}\n')
        open_parallel([str(tmp_path / "bad.jsonl")])
    with pytest.raises(UserError, match="no such file"):
        open_parallel([str(tmp_path / "missing.jsonl")])
