"""cmtlib.data.tables: a broken line of a metadata CSV costs only that line."""

from __future__ import annotations

import gzip

import pytest

from cmtlib.data.tables import read_json, read_table
from cmtlib.errors import DataFileError


def _table(tmp_path, data: bytes, name: str = "t.csv", **kw):
    path = tmp_path / name
    path.write_bytes(data)
    return read_table(path, **kw)


def test_good_lines_are_kept_with_their_line_numbers(tmp_path):
    t = _table(tmp_path, b'\xef\xbb\xbfa,b,c\r\n1,"two\r\nlines",3\r\n# not a comment here\r\n\r\n4,5,6\r\n')
    assert list(t.frame.columns) == ["a", "b", "c"]  # BOM gone
    assert t.frame.index.tolist() == [2, 6] and t.frame.loc[2, "b"] == "two\r\nlines"
    assert [(line, why.split(",")[0]) for line, why, _ in t.bad_lines] == [(4, "has 1 fields")]


def test_each_kind_of_damage_costs_its_own_line(tmp_path):
    data = (b"name,label\n"
            b"a.png,ok\n"
            b'b.png,"never closed\n'        # an open quote: only this line
            b"c.png,ok,extra\n"             # a field too many
            b"d.png\n"                      # a field too few
            b"e.png,caf\xe9\n"              # not UTF-8
            b"f.png,n\x00ul\n"              # NUL
            b"g.png,ok,,\n"                 # trailing empty fields are fine
            b"h.png,ok\n")
    t = _table(tmp_path, data)
    assert t.frame["name"].tolist() == ["a.png", "g.png", "h.png"]
    why = {line: text for line, text, _ in t.bad_lines}
    assert sorted(why) == [3, 4, 5, 6, 7]
    assert "never closed" in why[3] and "3 fields" in why[4] and "1 fields" in why[5]
    assert "0xe9" in why[6] and "NUL" in why[7]


def test_a_truncated_gzip_keeps_its_exact_prefix_and_a_damaged_one_is_refused(tmp_path):
    text = "name,label\n" + "".join(f"{i}.png,Mass\n" for i in range(2000))
    packed = gzip.compress(text.encode())
    t = _table(tmp_path, packed[: len(packed) // 2], "t.csv.gz")
    assert len(t.frame) > 100 and (t.frame["label"] == "Mass").all()
    assert "truncated download" in t.bad_lines[-1][1]
    damaged = bytearray(packed)
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(DataFileError, match="damaged gzip"):
        _table(tmp_path, bytes(damaged), "d.csv.gz")


def test_header_names_are_cleaned_as_pandas_names_them(tmp_path):
    t = _table(tmp_path, b"Image Index,Finding Label,Bbox [x,y,w,h],,,\nx.png,Mass,1,2,3,4\n")
    assert list(t.frame.columns) == ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]
    t = _table(tmp_path, b" a ,,a\n1,2,3\n")
    assert list(t.frame.columns) == ["a", "Unnamed: 1", "a.1"]


@pytest.mark.parametrize("data", [b"", b"\n\n", b"\x1f\x8b\x08\x00garbage"])
def test_a_file_that_cannot_be_read_at_all_is_a_data_file_error(tmp_path, data):
    with pytest.raises(DataFileError):
        _table(tmp_path, data)


def test_json_with_a_stray_byte_reads_with_a_warning_and_truncated_json_is_refused(tmp_path):
    (tmp_path / "a.json").write_bytes(b'{"name": "t\xffb"}')
    doc, warning = read_json(tmp_path / "a.json")
    assert doc == {"name": "t\ufffdb"} and "not UTF-8" in warning
    (tmp_path / "b.json").write_bytes(b'{"images": [1, 2')
    with pytest.raises(DataFileError, match="not valid JSON"):
        read_json(tmp_path / "b.json")


def test_a_broken_last_line_without_a_line_break_says_the_file_may_be_cut_short(tmp_path):
    t = _table(tmp_path, b"name,label,view\na.png,ok,PA\nb.png,o")
    assert t.frame["name"].tolist() == ["a.png"]
    assert "cut short?" in t.bad_lines[0][1]
    assert not _table(tmp_path, b"name,label\na.png,ok").bad_lines  # a complete last line needs no break


def test_utf16_with_a_byte_order_mark_is_read(tmp_path):
    t = _table(tmp_path, "name,label\na.png,ok\n".encode("utf-16"))
    assert t.frame.to_dict("records") == [{"name": "a.png", "label": "ok"}]
