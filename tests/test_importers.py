"""Importers on small files in each source format (DPR JSON + passages TSV, ViQuAE records, KILT articles and
passages), malformed records skipped with reasons and counts, fatal file errors as one-line exit 2."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.formats import read_kb, read_queries
from retrieval.importers import ImportFormatError, ImportStats, iter_records
from vlt5r.drivers.importers import main as import_main

REPO = Path(__file__).resolve().parents[1]


def ctx(pid: str, key: str = "passage_id", title: str = "T", text: str = "some text") -> dict:
    return {"title": title, "text": text, "score": 1, "title_score": 0, key: pid}


DPR = [
    {"dataset": "nq", "question": "who wrote hamlet", "answers": ["Shakespeare"],
     "positive_ctxs": [ctx("10"), ctx("10")], "negative_ctxs": [ctx("99", text="random")],
     "hard_negative_ctxs": [ctx("11"), ctx("10")]},
    {"question": "capital of france", "answers": ["Paris"], "positive_ctxs": [ctx("20", key="psg_id")],
     "hard_negative_ctxs": []},
    {"answers": ["x"], "positive_ctxs": []},  # malformed: no question
    {"question": "bad ctx", "positive_ctxs": [{"title": "x", "text": ""}]},  # malformed: no id, no text
    {"question": "no positives", "positive_ctxs": [], "hard_negative_ctxs": [ctx("11")]},
]


def test_dpr_json_to_queries_and_kb(tmp_path, capsys) -> None:
    src = tmp_path / "dpr.json"
    src.write_text(json.dumps(DPR, indent=1))  # pretty-printed across many lines: a streamed JSON array
    assert import_main(["dpr", "--input", str(src), "--out", str(tmp_path / "q.jsonl"), "--kb-out",
                        str(tmp_path / "kb.jsonl"), "--prefix", "nq-"]) == 0
    queries = {q.id: q for q in read_queries(tmp_path / "q.jsonl")}
    assert set(queries) == {"nq-0", "nq-1", "nq-4"}
    assert queries["nq-0"].positives == ["10"] and queries["nq-0"].hard_negatives == ["11"]  # dedup, no overlap
    assert queries["nq-1"].positives == ["20"] and queries["nq-1"].image is None
    assert {e.id for e in read_kb(tmp_path / "kb.jsonl")} == {"10", "11", "20", "99"}
    out = capsys.readouterr().out
    assert "3 queries written from 5 records" in out and "skipped 2" in out
    assert "missing 'question'" in out and "no 'passage_id' / 'psg_id' and no 'text'" in out and "[#2]" in out


def test_dpr_contexts_without_ids_get_stable_content_ids(tmp_path, capsys, caplog) -> None:
    """DPR's README schema: contexts are {"title", "text"} only. Ids come from sha1(title + newline + text), the same
    for the same passage in every record, and the import says how many it derived."""
    import hashlib
    import logging

    hamlet = {"title": "Hamlet", "text": "Hamlet is a tragedy by Shakespeare."}
    records = [{"question": "who wrote hamlet", "answers": ["Shakespeare"], "positive_ctxs": [hamlet],
                "negative_ctxs": [{"title": "Paris", "text": "Paris is in France."}],
                "hard_negative_ctxs": [{"title": "Macbeth", "text": "Macbeth is a tragedy."}, ctx("7")]},
               {"question": "what is hamlet", "answers": ["a play"], "positive_ctxs": [dict(hamlet)]}]
    (tmp_path / "dpr.json").write_text(json.dumps(records))
    with caplog.at_level(logging.INFO, logger="retrieval.importers.dpr"):
        assert import_main(["dpr", "--input", str(tmp_path / "dpr.json"), "--out", str(tmp_path / "q.jsonl"),
                            "--kb-out", str(tmp_path / "kb.jsonl")]) == 0
    hamlet_id = "ctx-" + hashlib.sha1(b"Hamlet\nHamlet is a tragedy by Shakespeare.").hexdigest()[:16]
    queries = read_queries(tmp_path / "q.jsonl")
    assert [q.positives for q in queries] == [[hamlet_id], [hamlet_id]]
    assert queries[0].hard_negatives[1] == "7" and queries[0].hard_negatives[0].startswith("ctx-")
    kb = {e.id: e for e in read_kb(tmp_path / "kb.jsonl")}
    assert kb[hamlet_id].text == hamlet["text"] and len(kb) == 4
    assert "4 contexts without an id" in capsys.readouterr().out
    assert any("4 contexts without an id" in r.getMessage() for r in caplog.records)


def test_dpr_passages_tsv(tmp_path) -> None:
    src = tmp_path / "psgs.tsv"
    src.write_text('id\ttext\ttitle\n1\t"Aaron is a prophet"\tAaron\n2\tbroken row\n3\tSecond text\tB\n')
    assert import_main(["dpr-passages", "--input", str(src), "--out", str(tmp_path / "kb.jsonl")]) == 0
    kb = read_kb(tmp_path / "kb.jsonl")
    assert [(e.id, e.title, e.text) for e in kb] == [("1", "Aaron", "Aaron is a prophet"), ("3", "B", "Second text")]


def test_viquae_records(tmp_path, capsys) -> None:
    rows = [
        {"id": "q1", "input": "who is this singer?", "image": "512px-Jackie_Wilson.png",
         "output": {"original_answer": "Levi's"}, "provenance_indices": [4, 7], "BM25_irrelevant_indices": [7, 9]},
        {"id": "q2", "input": "where was it built?", "image": "a/b.jpg", "provenance_indices": []},
        {"id": "q3", "image": "x.jpg", "provenance_indices": [1]},  # no question
        {"id": "q4", "input": "q", "image": "x.jpg", "provenance_indices": "4"},  # wrong type
        "not an object",
    ]
    src = tmp_path / "viquae.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n{broken json\n")
    assert import_main(["viquae", "--input", str(src), "--out", str(tmp_path / "q.jsonl"),
                        "--negatives", "BM25_irrelevant_indices", "--passage-prefix", "p"]) == 0
    queries = {q.id: q for q in read_queries(tmp_path / "q.jsonl")}
    assert set(queries) == {"q1", "q2"}
    assert queries["q1"].image == "512px-Jackie_Wilson" and queries["q2"].image == "a/b"
    assert queries["q1"].positives == ["p4", "p7"] and queries["q1"].hard_negatives == ["p9"]
    out = capsys.readouterr().out
    assert "skipped 4" in out and "invalid JSON" in out and "missing 'input'" in out
    assert "1 questions with empty 'provenance_indices'" in out


ARTICLES = [
    {"wikipedia_id": "290", "wikipedia_title": "A", "image": "512px-A.jpg",
     "text": {"paragraph": ["A\n", "A is the first letter.\n", "Section::::History.\n", "It is old.\n"]}},
    {"wikipedia_id": "303", "wikipedia_title": "Alabama", "text": ["Alabama", "A state.", "  "]},
    {"wikipedia_id": "404", "wikipedia_title": "Empty", "text": ["Empty"]},  # no text: skipped
    {"wikipedia_title": "no id", "text": ["x", "y"]},  # skipped
]


def test_kilt_articles_by_paragraph_and_article(tmp_path, capsys) -> None:
    src = tmp_path / "kb_src.jsonl"
    src.write_text("\n".join(json.dumps(a) for a in ARTICLES))
    assert import_main(["kilt", "--input", str(src), "--out", str(tmp_path / "kb.jsonl")]) == 0
    kb = read_kb(tmp_path / "kb.jsonl")
    assert [(e.id, e.text, e.image) for e in kb] == [("290_1", "A is the first letter.", "512px-A"),
                                                     ("290_3", "It is old.", "512px-A"), ("303_1", "A state.", None)]
    assert "skipped 2" in capsys.readouterr().out
    assert import_main(["kilt", "--input", str(src), "--out", str(tmp_path / "art.jsonl"), "--split", "article"]) == 0
    assert read_kb(tmp_path / "art.jsonl")[0].text == "A is the first letter.\nIt is old."


def test_kilt_passages_use_row_numbers_and_article_titles(tmp_path) -> None:
    (tmp_path / "articles.jsonl").write_text("\n".join(json.dumps(a) for a in ARTICLES[:2]))
    passages = [{"passage": "A is the first letter.", "index": 0}, {"passage": "", "index": 0},
                {"passage": "A state.", "index": 1}, {"passage": "dangling", "index": 5}]
    (tmp_path / "passages.jsonl").write_text("\n".join(json.dumps(p) for p in passages))
    assert import_main(["kilt", "--input", str(tmp_path / "passages.jsonl"), "--articles",
                        str(tmp_path / "articles.jsonl"), "--out", str(tmp_path / "kb.jsonl")]) == 0
    kb = read_kb(tmp_path / "kb.jsonl")
    # ids are row numbers: row 1 (empty) is skipped but still counted, so ViQuAE's passage indices stay aligned
    assert [(e.id, e.title, e.image) for e in kb] == [("0", "A", "512px-A"), ("2", "Alabama", None)]


def test_fatal_errors_are_one_line_exit_1(tmp_path) -> None:
    (tmp_path / "trunc.json").write_text('[{"question": "a", "positive_ctxs": []}, {"question": ')
    (tmp_path / "junk.jsonl").write_text("not json\n")
    cases = [
        (["dpr", "--input", str(tmp_path / "missing.json")], "no such file"),
        (["dpr", "--input", str(tmp_path / "trunc.json")], "invalid JSON in record #1"),
        (["viquae", "--input", str(tmp_path / "junk.jsonl")], "no valid records in 1: invalid JSON"),
        (["viquae", "--input", str(tmp_path / "junk.jsonl"), "--strict"], "junk.jsonl:1: invalid JSON"),
    ]
    for argv, message in cases:
        proc = subprocess.run([sys.executable, "-m", "retrieval.importers", *argv, "--out", str(tmp_path / "o.jsonl")],
                              capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 1, (argv, proc.stderr)  # user errors: exit 1, one line
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "o.jsonl").exists()


def test_json_array_streaming_handles_records_across_chunks(tmp_path, monkeypatch) -> None:
    import retrieval.importers.common as common

    monkeypatch.setattr(common, "CHUNK", 7)  # every record straddles several reads
    records = [{"i": i, "s": "x" * (i * 5)} for i in range(30)]
    (tmp_path / "a.json").write_text(json.dumps(records))
    assert [r for _, r in iter_records(tmp_path / "a.json")] == records
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    assert [r for _, r in iter_records(tmp_path / "b.jsonl")] == records
    with pytest.raises(ImportFormatError, match="not closed"):
        list(iter_records(_write(tmp_path / "c.json", json.dumps(records)[:-1])))
    assert ImportStats().summary("x") == "0 x written from 0 records"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_kilt_output_feeds_the_passage_map_without_edits(tmp_path) -> None:
    """ViQuAE-style search: an index over the articles (ids from --split article), passages from the same import
    (--split paragraph, or passage records + --articles) → PassageMap → ranked passages, no hand edits."""
    import numpy as np

    from retrieval.indexing import IndexConfig, build_index
    from retrieval.querying import PassageMap, Searcher

    src = tmp_path / "kb_src.jsonl"
    src.write_text("\n".join(json.dumps(a) for a in ARTICLES))
    assert import_main(["kilt", "--input", str(src), "--out", str(tmp_path / "articles.jsonl"), "--split",
                        "article"]) == 0
    assert import_main(["kilt", "--input", str(src), "--out", str(tmp_path / "paragraphs.jsonl")]) == 0
    (tmp_path / "records.jsonl").write_text("\n".join(json.dumps(p) for p in [
        {"passage": "A is the first letter.", "index": 0}, {"passage": "A state.", "index": 1},
        {"passage": "It is old.", "index": 0}]))
    assert import_main(["kilt", "--input", str(tmp_path / "records.jsonl"), "--articles", str(src), "--out",
                        str(tmp_path / "records_kb.jsonl")]) == 0
    articles = {e.id: e for e in read_kb(tmp_path / "articles.jsonl")}
    assert list(articles) == ["290", "303"]
    index = build_index(np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32), list(articles),
                        IndexConfig(factory="Flat"))
    query = np.array([[1.0, 0.2]], dtype=np.float32)  # article 290 first, then 303
    for passages, expected in [("paragraphs.jsonl", ["290_1", "290_3", "303_1"]),
                               ("records_kb.jsonl", ["0", "2", "1"])]:
        searcher = Searcher(index, articles, None, PassageMap.from_jsonl(tmp_path / passages))
        hits = searcher.search_vectors(query, 3)[0]
        assert [h.id for h in hits] == expected, passages
        assert hits[0].title == "A" and hits[0].snippet == "A is the first letter."
        assert searcher.image_entry_id(expected[0]) == "290"  # the passage's picture is its article's


def test_a_full_disk_is_one_line_naming_the_output_and_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    """ENOSPC while streaming the JSONL: a DiskWriteError naming the output; an existing output is unchanged."""
    import errno

    from foundations.io import DiskWriteError
    from retrieval.formats import KBEntry
    from retrieval.importers.write import write_unique

    out = tmp_path / "kb.jsonl"
    out.write_text("old\n")

    def records():
        yield KBEntry(id="a", title="t", text="x")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskWriteError, match=r"kb\.jsonl: no space left on device; nothing was lost"):
        write_unique(out, records(), ImportStats(), strict=False)
    assert out.read_text() == "old\n" and not (tmp_path / "kb.jsonl.part").exists()
