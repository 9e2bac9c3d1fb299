"""The SMART test-collection reader (CISI, Cranfield, MED, CACM): documents for ingest, queries and
relevance judgements for eval."""

import pytest

from ragcluster.errors import InvalidArgument
from ragcluster.tools.evaluation import evaluate_retrieval, load_qrels, load_queries
from ragcluster.tools.smart import is_smart, read_smart, read_smart_documents, read_smart_qrels
from ragcluster.tools.sources import read_smart_files

CISI_ALL = """.I 1
.T
18 Editions of the Dewey Decimal Classifications
.A
Comaromi, J.P.
.W
   The present study is a history of the DEWEY Decimal
Classification.  The first edition of the DDC was published
in 1876.
.X
1	5	1
92	1	1
.I 2
.T{sp}
Use Made of Technical Libraries
.A{sp}
Slater, M.
.W
This report is an analysis of 6300 acts of use
.NET and .W-like text inside a paragraph stays text.
.X
2	6	2
""".format(sp=" ")  # CISI has trailing spaces after some field markers

CISI_QRY = """.I 1
.W
What problems and concerns are there in making up descriptive titles?
What difficulties are involved?
.I 2
.W
How can actually pertinent data be retrieved?
.I 3
.W
What is information science?
"""

CISI_REL = """     1     28\t0\t0.000000
     1     35\t0\t0.000000
     2      1\t0\t0.000000
"""


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_documents_keep_title_text_and_authors(tmp_path):
    path = write(tmp_path, "CISI.ALL", CISI_ALL)
    assert is_smart(path)
    docs = read_smart_documents(path)
    assert [d.id for d in docs] == ["1", "2"]
    assert docs[0].title == "18 Editions of the Dewey Decimal Classifications"
    assert docs[0].text == ("The present study is a history of the DEWEY Decimal Classification.  The first edition "
                            "of the DDC was published in 1876.")  # lines joined by one space
    assert docs[0].metadata == {"authors": "Comaromi, J.P."}
    assert docs[1].text.endswith(".NET and .W-like text inside a paragraph stays text.")
    assert read_smart(path)[0].fields["X"].startswith("1\t5\t1")
    records = list(read_smart_files([str(path), str(tmp_path / "missing.ALL")]))
    assert [r.document.id for r in records if r.document] == ["1", "2"]
    assert records[-1].error == "no such file"


def test_queries_and_judgements_load_for_eval(tmp_path):
    queries = load_queries(write(tmp_path, "CISI.QRY", CISI_QRY))
    assert list(queries) == ["1", "2", "3"]
    assert queries["1"] == ("What problems and concerns are there in making up descriptive titles? "
                            "What difficulties are involved?")
    qrels = load_qrels(write(tmp_path, "CISI.REL", CISI_REL))
    assert qrels == {"1": {"28": 1, "35": 1}, "2": {"1": 1}}
    report = evaluate_retrieval({"1": [("28", 2.0), ("7", 1.0)], "2": [("1", 1.0)]}, qrels, 10)
    assert report.evaluated == 2 and report.means["mrr"] == 1.0


def test_other_collections_variants(tmp_path):
    # Cranfield numbers queries 001, 002 while its judgements say 1, 2
    cran = read_smart(write(tmp_path, "cran.qry", ".I 001\n.W\nwhat similarity laws must be obeyed\n.I 002\n.W\nx\n"))
    assert [r.id for r in cran] == ["1", "2"]
    # MED.REL is TREC style: query 0 doc grade
    assert read_smart_qrels(write(tmp_path, "MED.REL", "1 0 13 1\n1 0 14 1\n2 0 80 2\n")) == \
        {"1": {"13": 1, "14": 1}, "2": {"80": 2}}
    with pytest.raises(InvalidArgument, match=r"expected '\.I <id>'"):
        read_smart(write(tmp_path, "bad.ALL", "hello\n.I 1\n"))
    with pytest.raises(InvalidArgument, match="numbers"):
        read_smart_qrels(write(tmp_path, "bad.REL", "1 28\nq7 x\n"))
    # a BEIR qrels file (header line) still reads as before
    assert load_qrels(write(tmp_path, "qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t2\n")) == {"q1": {"d1": 2}}


def test_ingest_recognises_a_smart_file(tmp_path):
    from ragcluster.tools.cli.ingest import IngestOptions, _ingest_records

    path = write(tmp_path, "CISI.ALL", CISI_ALL)
    records, _total = _ingest_records(IngestOptions(), [str(path)])
    assert [(d.id, d.title) for d in (r.document for r in records) if d is not None] == [
        ("1", "18 Editions of the Dewey Decimal Classifications"), ("2", "Use Made of Technical Libraries")]
