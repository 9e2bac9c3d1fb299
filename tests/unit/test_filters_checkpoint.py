import numpy as np
import pytest

from ragcluster.errors import InvalidArgument
from shard_server.checkpoint import CorruptCheckpoint, read_checkpoint, write_checkpoint
from shard_server.filters import Condition, Filter, compile_filter

FIELDS = {"topic": "string", "n": "number", "flag": "bool", "any": "mixed"}


def test_compile_each_test_kind():
    clauses = compile_filter(Filter([Condition("topic", equals="x"), Condition("n", gte=1, lt=5),
                                     Condition("topic", any_of=["a", "b"]), Condition("flag", equals=True)]), FIELDS)
    assert clauses[0] == ("key = ? AND s = ?", ["topic", "x"])
    assert clauses[1] == ("key = ? AND n IS NOT NULL AND n >= ? AND n < ?", ["n", 1, 5])
    assert clauses[2] == ("key = ? AND (s IN (?,?))", ["topic", "a", "b"])
    assert clauses[3] == ("key = ? AND n = ?", ["flag", 1.0])


@pytest.mark.parametrize("cond,message", [
    (Condition("nope", equals="x"), "filter.must[0].field: unknown metadata field 'nope' (known: any, flag, n, topic)"),
    (Condition("", equals="x"), "field: empty"),
    (Condition("topic", gte=3), "holds string values, not numbers"),
    (Condition("n", equals="text"), "field holds number values, got a string"),
    (Condition("topic", any_of=[]), "any_of: between 1 and"),
    (Condition("n"), "exactly one of"),
    (Condition("n", equals=1, gte=0), "exactly one of"),
    (Condition("n", gte=float("inf")), "finite"),
])
def test_bad_filters_name_the_problem(cond, message):
    with pytest.raises(InvalidArgument) as err:
        compile_filter(Filter([cond]), FIELDS)
    assert message in str(err.value)


def test_checkpoint_roundtrip_and_corruption(tmp_path):
    path = tmp_path / "index.ckpt"
    blob = np.frombuffer(b"faiss-bytes" * 100, dtype=np.uint8)
    tomb = np.array([3, 9, 27], dtype=np.int64)
    size = write_checkpoint(path, {"sequence": 7, "dim": 4}, blob, tomb)
    assert size == path.stat().st_size and not (tmp_path / "index.ckpt.tmp").exists()
    header, data, tombstones = read_checkpoint(path)
    assert header == {"sequence": 7, "dim": 4} and data.tobytes() == blob.tobytes()
    assert tombstones.tolist() == [3, 9, 27]
    raw = bytearray(path.read_bytes())
    raw[40] ^= 0xFF  # one flipped bit anywhere is caught
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCheckpoint, match="checksum"):
        read_checkpoint(path)
    path.write_bytes(bytes(raw[:100]))  # torn write
    with pytest.raises(CorruptCheckpoint):
        read_checkpoint(path)
    path.write_bytes(b"garbage")
    with pytest.raises(CorruptCheckpoint, match="magic"):
        read_checkpoint(path)
