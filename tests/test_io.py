import pytest

from llmbench.errors import UserError
from llmbench.io import read_jsonl, write_jsonl_atomic


def test_jsonl_round_trip(tmp_path):
    rows = [{"id": "a", "x": 1}, {"id": "b", "text": "é"}]
    assert read_jsonl(write_jsonl_atomic(tmp_path / "d" / "r.jsonl", rows)) == rows


def test_a_corrupt_line_is_a_one_line_error_naming_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a"}\n{"id": \n')
    with pytest.raises(UserError, match=r"r.jsonl:2: not valid JSON"):
        read_jsonl(path)


def test_failed_write_leaves_the_old_file(tmp_path):
    path = write_jsonl_atomic(tmp_path / "r.jsonl", [{"id": "old"}])

    def rows():
        yield {"id": "new"}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(path, rows())
    assert read_jsonl(path) == [{"id": "old"}]
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
