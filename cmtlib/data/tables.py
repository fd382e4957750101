"""Reading the metadata files of public collections (CSV, plain or gzip, and JSON) so that one
broken line costs only that line.

Downloads arrive truncated, with a stray byte or quote, or hand-edited. `read_table` therefore
never stops at a bad line: a line it cannot trust (wrong number of fields, a NUL byte, an
unbalanced quote, the header line repeated, the partial last line of a truncated gzip) is left out
and listed in `Table.bad_lines` with its line number and why, for the importer to quarantine. Only
a file that cannot be read at all (missing, empty, no header, damaged gzip data) raises
`DataFileError`, naming the file.

The text encoding is the file's, and a line that is not valid in it costs only that line: one
stray byte never makes the other lines be read in another encoding (their UTF-8 would become
mojibake). The file's encoding is the first of those given when it reads the whole file; failing
that, the first in which at least half of the lines holding non-ASCII bytes are valid (a UTF-8 file
with one stray byte stays UTF-8; Figure1's latin-1 file, whose non-ASCII lines are not UTF-8, is
latin-1). A line with bytes that are not valid in
it is left out when they fall in a column the importer names `critical` (the path, finding, label,
patient or view columns: the row's meaning), and otherwise kept with those cells blank, listed in
`Table.damaged` for the importer's note.

A table's index is the file line each record starts on (1 = the header), so messages name the
line a user opens in an editor.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import zlib
from dataclasses import dataclass, field
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pandas as pd

from cmtlib.errors import DataFileError

GZIP_MAGIC = b"\x1f\x8b"
# A quoted field may hold line breaks (clinical notes), but a record longer than this is a quote
# that was never closed: it would swallow the rows after it.
MAX_RECORD_LINES = 50
# Metadata tables are megabytes; a gzip that inflates past this is not one (or is a bomb).
MAX_INFLATED = 2 * 1024**3
_NOT_TEXT = re.compile("[\udc80-\udcff]")  # bytes the decoder could not read (surrogateescape)

__all__ = ["Table", "read_table", "read_json", "read_bytes"]


@dataclass
class Table:
    """A CSV as strings ('' = blank), indexed by file line, and the lines left out with why."""

    frame: pd.DataFrame
    path: Path
    # (line, why, the line's text): the text lets an importer tell which image a lost line was about.
    bad_lines: list[tuple[int, str, str]] = field(default_factory=list)
    # line -> [(column, its text with U+FFFD for the bytes)]: cells blanked for bytes not valid in
    # the file's encoding, in columns that are not critical (the row is kept).
    damaged: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    encoding: str = "utf-8"


def read_bytes(path: Path) -> tuple[bytes, str]:
    """The file's bytes, inflated when it is gzip data, and '' or why the data ends early."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise DataFileError(f"{path} cannot be read ({err.strerror or err}); check that it exists and is readable") from err
    if not raw:
        raise DataFileError(f"{path} is empty (0 bytes); the download failed, fetch it again")
    if raw[:2] != GZIP_MAGIC:
        return raw, ""
    return _inflate(raw, path)


def _inflate(raw: bytes, path: Path) -> tuple[bytes, str]:
    """gzip data inflated as far as it goes: a download cut short keeps the part it holds (deflate
    data decodes in order, so that part is exact); damaged data is refused whole."""
    parts: list[bytes] = []
    total, pos, step = 0, 0, 1 << 16
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    problem = ""
    while pos < len(raw):
        try:
            chunk = inflater.decompress(raw[pos:pos + step])
        except zlib.error as err:
            # Damaged, not cut short: where the damage starts is unknown (the checksum is only
            # tested at the end), so no line of it can be trusted.
            raise DataFileError(f"{path} is damaged gzip data ({err}); fetch it again") from err
        pos += step
        parts.append(chunk)
        total += len(chunk)
        if total > MAX_INFLATED:
            raise DataFileError(f"{path} inflates past {MAX_INFLATED:,} bytes; not a metadata table")
        if inflater.eof:
            rest = inflater.unused_data + raw[pos:]
            if not rest.strip(b"\0"):
                break
            # A second gzip member (concatenated files) continues the text.
            raw, pos, inflater = rest, 0, zlib.decompressobj(16 + zlib.MAX_WBITS)
    else:
        if not inflater.eof:
            problem = f"gzip data ends early after {total:,} bytes (a truncated download)"
    if total == 0 and problem:
        raise DataFileError(f"{path}: {problem}; nothing could be read, fetch it again")
    return b"".join(parts), problem


def _codec(enc: str) -> str:
    return "utf-8-sig" if enc.lower().replace("_", "-") in ("utf-8", "utf8") else enc


def _decode(data: bytes, encodings: tuple[str, ...], path: Path) -> tuple[str, str]:
    """(text, the file's encoding) by the module docstring's rule; bytes not valid in that encoding
    are kept as surrogates (surrogateescape), so that only the lines holding them are affected. A
    UTF-16 byte-order mark (Excel's "Unicode text") decides by itself."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            pass  # a damaged UTF-16 file: read below, where its lines are refused one by one
    for enc in encodings:
        try:
            codecs.lookup(_codec(enc))
        except LookupError as err:
            raise DataFileError(f"{path}: unknown text encoding {enc!r} (e.g. utf-8, latin-1)") from err
    try:
        return data.decode(_codec(encodings[0])), encodings[0]
    except UnicodeDecodeError:
        pass
    lines = data.split(b"\n")
    wide = [line for line in lines if not line.isascii()]
    chosen = next((enc for enc in encodings if 2 * sum(_valid(line, enc) for line in wide) >= len(wide)), encodings[0])
    first = _codec(chosen)
    rest = first.replace("-sig", "")  # a byte-order mark is skipped at the start of the file only
    # Line by line: a line valid in the file's encoding keeps its text whatever the others hold.
    text = "\n".join(line.decode(first if k == 0 else rest, errors="surrogateescape") for k, line in enumerate(lines))
    return text, chosen


def _valid(line: bytes, enc: str) -> bool:
    try:
        line.decode(_codec(enc))
        return True
    except UnicodeDecodeError:
        return False


def read_table(path: str | Path, encodings: tuple[str, ...] = ("utf-8",), comment: str = "",
               critical: Collection[str] | Callable[[str], bool] | None = None) -> Table:
    """Read a CSV (or gzip'd CSV) into a Table of strings; bad lines are listed, not raised.

    Args:
        path: the file; gzip data is recognised by its content, not its name.
        encodings: the encodings the file may be in, in order of preference (module docstring).
        comment: a line starting with this text is skipped (e.g. '#'); '' = none.
        critical: the columns (or a test on a column name) in which bytes not valid in the file's
            encoding cost the line; elsewhere the cell is blanked and listed in `Table.damaged`.
            None: every column is critical.

    Raises:
        DataFileError: the file cannot be read, is empty, or has no header line.
    """
    path = Path(path)
    data, truncated = read_bytes(path)
    text, encoding = _decode(data, encodings, path)
    frame = None if truncated else _plain_frame(text, comment)
    if frame is not None:
        return Table(frame, path, encoding=encoding)
    lines = list(io.StringIO(text, newline=""))
    bad: list[tuple[int, str, str]] = []
    records = _records(lines, comment, bad)
    if truncated and records and not lines[-1].endswith(("\n", "\r")):
        number, raw = records.pop()
        bad.append((number, f"is incomplete ({truncated}); any lines after it are missing", raw))
    elif truncated:
        bad.append((len(lines) + 1, f"and any after it are missing ({truncated})", ""))
    if not records:
        raise DataFileError(f"{path} has no header line; is it a CSV table?" + (f" ({truncated})" if truncated else ""))
    names = _fields(records[0][1])
    if not names:
        raise DataFileError(f"{path}: its header line cannot be read as CSV; is it a CSV table?")
    header = _header(names)
    is_critical = critical if callable(critical) else (lambda c: True) if critical is None else (lambda c: c in critical)
    table = Table(pd.DataFrame(), path, encoding=encoding)
    rows, index = _rows(records[1:], header, _header_key(names), is_critical, bad, table,
                        scan=bool(_NOT_TEXT.search(text)) or "\0" in text)
    if bad and not truncated and not text.endswith(("\n", "\r")) and (not index or max(bad)[0] > index[-1]):
        # A broken last line with no line break after it: most likely a download cut short.
        last = max(bad)
        bad[bad.index(last)] = (last[0], f"{last[1]} (the file ends on this line without a line break: cut short?)", last[2])
    table.frame = pd.DataFrame(rows, columns=header, index=pd.Index(index, name="line"), dtype=object)
    table.bad_lines = sorted(bad)
    return table


def _rows(records: list[tuple[int, str]], header: list[str], header_key: tuple[str, ...], is_critical: Callable[[str], bool],
          bad: list[tuple[int, str, str]], table: Table, scan: bool) -> tuple[list[list[str]], list[int]]:
    """The data records as rows of `header`'s width, and their line numbers; the others go to `bad`.
    `scan`: the file holds undecodable or NUL bytes somewhere, so each record is looked at for them."""
    rows, index = [], []
    for number, record in records:
        fields = _fields(record)
        if fields is not None and _header_key(fields) == header_key:
            bad.append((number, "is a repeated header line (files joined into one?); it is not a record", record))
            continue
        problem = _problem(fields, len(header), record, scan)
        if not problem and scan:
            problem = _undecodable(fields, header, number, is_critical, table)
        if problem:
            bad.append((number, problem, record))
            continue
        rows.append(fields[:len(header)])
        index.append(number)
    return rows, index


def _header_key(fields: list[str]) -> tuple[str, ...]:
    """A header line's names as compared with a record (case, spaces, a byte-order mark and trailing
    empty names do not count)."""
    names = [f.replace("\ufeff", "").strip().casefold() for f in fields]
    while names and names[-1] == "":
        names.pop()
    return tuple(names)


def _undecodable(fields: list[str], header: list[str], number: int, is_critical: Callable[[str], bool], table: Table) -> str:
    """Why a record with bytes not valid in the file's encoding is left out (one of them is in a
    critical column), or '' after blanking those cells (their text kept in `table.damaged`)."""
    hit = [(k, name) for k, (name, value) in enumerate(zip(header, fields)) if _NOT_TEXT.search(value)]
    if not hit:
        return ""
    lost = [name for _, name in hit if is_critical(name)]
    if lost:
        byte = ord(_NOT_TEXT.search(fields[hit[0][0]]).group()) - 0xDC00
        return (f"holds bytes that are not text in the file's encoding ({table.encoding}; 0x{byte:02x}) in column(s) "
                f"{', '.join(lost)}: the row cannot be read; re-save the file as UTF-8")
    table.damaged[number] = [(name, _NOT_TEXT.sub("\ufffd", fields[k])) for k, name in hit]
    for k, _ in hit:
        fields[k] = ""
    return ""


def _plain_frame(text: str, comment: str) -> pd.DataFrame | None:
    """The frame of a file with nothing to repair (no quote, NUL, CR, undecodable byte, comment,
    blank line, and every line as many commas as the header), parsed by pandas' C reader; None
    otherwise. Clean files are the common case, and ChestX-ray14's table has 112,120 lines."""
    if '"' in text or "\0" in text or "\r" in text or (comment and comment in text) or _NOT_TEXT.search(text):
        return None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if len(lines) < 2:
        return None
    commas = lines[0].count(",")
    header = _header(lines[0].split(","))
    key = _header_key(lines[0].split(","))
    if any(line.count(",") == commas and _header_key(line.split(",")) == key for line in lines[1:]
           if line[:1].isalpha() or line[:1] == "\ufeff"):
        return None  # a repeated header line: read line by line, where it is named
    if len(header) != commas + 1 or any(line.count(",") != commas or not line.strip(", ") for line in lines):
        return None
    frame = pd.read_csv(io.StringIO(text), header=None, skiprows=1, names=header, dtype=str, keep_default_na=False,
                        na_filter=False, quoting=csv.QUOTE_NONE, engine="c")
    frame.index = pd.Index(range(2, len(lines) + 1), name="line")
    return frame.astype(object)


def _records(lines: list[str], comment: str, bad: list[tuple[int, str, str]]) -> list[tuple[int, str]]:
    """(first line number, record text) per CSV record; a record continues while a quote is open."""
    if not any('"' in line for line in lines):  # the common case, and ChestX-ray14's 112,120 lines
        return [(i + 1, line) for i, line in enumerate(lines)
                if line.strip().strip(",") and not (comment and line.startswith(comment))]
    out: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        start, text = i, lines[i]
        if (comment and text.startswith(comment)) or not text.strip().strip(","):
            i += 1
            continue
        quotes = text.count('"')
        while quotes % 2 and i + 1 < len(lines) and i - start < MAX_RECORD_LINES:
            i += 1
            text += lines[i]
            quotes += lines[i].count('"')
        if quotes % 2:
            # A quote never closed: only its own line is lost, parsing goes on on the next one.
            bad.append((start + 1, "opens a quote (\") that is never closed; fix or remove it", lines[start]))
            i = start + 1
            continue
        out.append((start + 1, text))
        i += 1
    return out


def _fields(record: str) -> list[str] | None:
    """The record's fields, or None when the csv module cannot parse it (a stray quote with a line
    break in an unquoted field)."""
    record = record.rstrip("\r\n")
    if '"' not in record:
        return record.split(",")
    try:
        return next(csv.reader([record]), [])
    except csv.Error:
        return None


def _header(names: list[str]) -> list[str]:
    """Column names stripped; trailing blank names dropped (ChestX-ray14's BBox header ends ',,,');
    other blank names 'Unnamed: k' and repeats 'name.1', as pandas names them."""
    names = [_NOT_TEXT.sub("\ufffd", n.strip().lstrip("\ufeff")) for n in names]
    while names and names[-1] == "":
        names.pop()
    out: list[str] = []
    for k, name in enumerate(names):
        name = name or f"Unnamed: {k}"
        base, n = name, 0
        while name in out:
            n += 1
            name = f"{base}.{n}"
        out.append(name)
    return out


def _problem(fields: list[str] | None, n: int, record: str, scan: bool = True) -> str:
    """Why a record cannot be trusted, or ''. `scan`: look for NUL bytes too, and for undecodable
    bytes in a record of the wrong shape (in one of the right shape, `_undecodable` decides)."""
    if fields is None:
        return "cannot be parsed as CSV (a stray quote?); fix or remove it"
    if len(fields) == n and not scan:
        return ""
    if scan and "\0" in record:
        return "holds NUL bytes (a damaged download?); fetch the file again or remove the line"
    wrong = (f"has {len(fields)} fields, the header has {n}: a comma in an unquoted value? quote it"
             if len(fields) > n and any(f.strip() for f in fields[n:]) else
             f"has {len(fields)} fields, the header has {n}: a truncated or broken line? complete it" if len(fields) < n else "")
    bad_byte = _NOT_TEXT.search(record) if scan and wrong else None
    if bad_byte:
        return (f"holds bytes that are not text in the file's encoding (0x{ord(bad_byte.group()) - 0xDC00:02x}) and {wrong}; "
                "re-save the file as UTF-8")
    return wrong


def read_json(path: str | Path) -> tuple[Any, str]:
    """(document, '' or a warning) from a JSON (or gzip'd JSON) file.

    Bytes that are not UTF-8 are replaced by U+FFFD rather than refusing the file: JSON's structure
    is ASCII, so only the strings holding them change, and the warning says so.

    Raises:
        DataFileError: unreadable, truncated or not JSON at all.
    """
    path = Path(path)
    data, truncated = read_bytes(path)
    warning = ""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        text = data.decode("utf-8", errors="replace")
        warning = f"{path.name} holds bytes that are not UTF-8 (first at byte {err.start:,}); strings holding them were read with U+FFFD"
    try:
        return json.loads(text), warning
    except (json.JSONDecodeError, RecursionError) as err:
        why = f"{truncated}; " if truncated else ""
        raise DataFileError(f"{path} is not valid JSON ({why}{err}); a truncated or damaged download? fetch it again") from err
