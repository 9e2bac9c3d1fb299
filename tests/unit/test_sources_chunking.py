"""Ingest sources (CSV, directories, SQL) and token-aware chunking with the real embedding tokenizer."""

import itertools
import sqlite3

import pytest

from ragcluster.documents import Document
from ragcluster.errors import InvalidArgument
from ragcluster.tools.chunking import Chunker, load_embedding_tokenizer
from ragcluster.tools.sources import read_csv, read_dir, read_sql


def test_csv_columns_metadata_and_bad_rows(tmp_path):
    f = tmp_path / "docs.csv"
    f.write_text('doc,body,name,year,lang\nd1,"Text, with comma",First,1999,en\nd2,Second text,,2001.5,\n'
                 ',no id,x,1,en\nd4,extra,y,2,en,oops\nd5,"multi\nline",z,3,fr\n')
    records = list(read_csv([str(f)], id_col="doc", text_col="body", title_col="name"))
    good = {r.document.id: r.document for r in records if r.document}
    assert good["d1"] == Document("d1", "Text, with comma", "First", {"year": 1999, "lang": "en"})
    assert good["d2"].metadata == {"year": 2001.5} and good["d2"].title == ""
    assert good["d5"].text == "multi\nline"
    bad = [(r.line, r.error) for r in records if r.error]
    assert bad[0][0] == 4 and "empty 'doc'" in bad[0][1]
    assert bad[1][0] == 5 and "more cells" in bad[1][1]
    missing = list(read_csv([str(f)], id_col="id"))
    assert missing[0].error.startswith("header lacks column(s) ['id', 'text']")


def test_directory_of_text_markdown_html(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("plain text\n")
    (tmp_path / "sub" / "b.md").write_text("# The Title\n\nSome *markdown*.\n")
    (tmp_path / "c.html").write_text("<html><head><title>Page</title><script>x()</script></head>"
                                     "<body><p>Hello <b>there</b></p></body></html>")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    records = list(read_dir([str(tmp_path)]))
    docs = {r.document.id: r.document for r in records if r.document}
    assert set(docs) == {"a.txt", "sub/b.md", "c.html"}
    assert docs["sub/b.md"].title == "The Title" and docs["a.txt"].title == "a"
    assert docs["c.html"].title == "Page" and docs["c.html"].text == "Hello there"
    assert [r.error.startswith("not UTF-8") for r in records if r.error] == [True]


def test_sql_from_sqlite_file_and_sqlalchemy_url(tmp_path):
    db = tmp_path / "corpus.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE articles (id TEXT, text TEXT, title TEXT, score REAL)")
    conn.executemany("INSERT INTO articles VALUES (?, ?, ?, ?)",
                     [("s1", "one", "T1", 0.5), ("s2", "two", None, 2), ("", "no id", "x", 1)])
    conn.commit()
    conn.close()
    query = "SELECT id, text, title, score FROM articles ORDER BY rowid"
    for source in (str(db), f"sqlite:///{db}"):
        records = list(read_sql(source, query))
        docs = [r.document for r in records if r.document]
        assert [d.id for d in docs] == ["s1", "s2"] and docs[0].metadata == {"score": 0.5}
        assert records[2].error and records[2].line == 3
    assert "query failed" in next(iter(read_sql(str(db), "SELECT nope FROM missing"))).error
    assert "no column(s) ['text']" in next(iter(read_sql(str(db), "SELECT id FROM articles"))).error


@pytest.fixture(scope="module")
def tokenizer():
    return load_embedding_tokenizer()


def test_chunk_boundaries_and_overlap(tokenizer):
    words = [f"w{i}" for i in range(100)]
    text = " ".join(words)
    n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    chunker = Chunker(tokenizer, chunk_tokens=40, overlap=10)
    spans = chunker.spans(text)
    # windows start every 30 tokens and the last one reaches the end
    assert len(spans) == -(-max(n_tokens - 40, 0) // 30) + 1
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (_a0, a1), (b0, _b1) in itertools.pairwise(spans):
        assert b0 < a1  # consecutive chunks overlap
    for a, b in spans:
        assert len(tokenizer(text[a:b], add_special_tokens=False)["input_ids"]) <= 40
    chunks = chunker.split(Document("doc", text, "T", {"k": 1}))
    assert [c.id for c in chunks] == [f"doc#{n}" for n in range(len(spans))]
    assert all(c.metadata == {"k": 1, "parent_id": "doc", "chunk": n} and c.title == "T" for n, c in enumerate(chunks))
    assert Chunker(tokenizer, 40).split(Document("short", "tiny text"))[0].text == "tiny text"


def test_chunk_parameters_are_checked(tokenizer):
    with pytest.raises(InvalidArgument, match="chunk_tokens"):
        Chunker(tokenizer, 300)
    with pytest.raises(InvalidArgument, match="chunk_overlap"):
        Chunker(tokenizer, 40, 40)


def test_content_hash_changes_with_content():
    a = Document("x", "text", "t", {"n": 1})
    assert a.content_hash() == Document("x", "text", "t", {"n": 1}).content_hash()
    assert a.content_hash() != Document("x", "text!", "t", {"n": 1}).content_hash()
    assert a.content_hash() != Document("x", "text", "t", {"n": 1.5}).content_hash()
