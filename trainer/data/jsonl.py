"""Records from JSON Lines (plain, gzip or zstd) and JSON-array files, each with the line it starts on.

Every error names `file:LINE`, so a bad record in a 100 MB export can be found and fixed. A name ending in
`.jsonl` (or `.jsonl.gz`, `.jsonl.zst`) is always one object per line; any other file whose first non-blank character is `[`
is one JSON array (Stanford's `alpaca_data.json`), since `.json` is used for both layouts in the wild.
"""
from __future__ import annotations

import gzip
import io
import json
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from trainer.errors import DataError

# How many skipped locations a report shows; the count is always complete.
KEPT_LOCATIONS = 5
BOM, NEWLINE = b"\xef\xbb\xbf", b"\n"
# Nesting levels a record may have beyond Python's usual 1,000: an OASST tree nests two per turn, so threads of up
# to ~2,000 turns are read (the C stack holds these levels many times over).
JSON_DEPTH = 4000
DEEPER = (f"JSON nested deeper than the parser allows ({JSON_DEPTH:,} levels beyond Python's recursion limit, an "
          f"OASST thread of about 2,000 turns); split the tree or drop the record (skip_bad_lines: true)")


@contextmanager
def deep_json() -> Iterator[None]:
    """json's C parser recurses once per nesting level and stops at the interpreter's recursion limit (1,000), which
    an OASST export of a 600-turn thread passes: the limit is raised by JSON_DEPTH while one record is parsed."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + JSON_DEPTH)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


@dataclass
class BadRecords:
    """Where malformed records go: raised at once, or (with `skip`) counted and the first few kept."""

    skip: bool = False
    count: int = 0
    first: list[str] = field(default_factory=list)

    def handle(self, error: DataError) -> None:
        if not self.skip:
            raise error
        self.count += 1
        if len(self.first) < KEPT_LOCATIONS:
            self.first.append(str(error))


LINE_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")


class ZstdCut(ValueError):
    """A .zst file that ends inside a frame, or whose bytes are not zstd."""


class ZstdReader(io.RawIOBase):
    """A `.zst` file's decompressed bytes, frame after frame, in bounded pieces. Unlike zstandard's
    `stream_reader`, a file that ends inside a frame (a cut download) is an error, not a silently shorter file."""

    def __init__(self, path: Path):
        import zstandard  # only for .zst files

        self._file = open(path, "rb")
        self._frame_type = lambda: zstandard.ZstdDecompressor().decompressobj()
        self._error = zstandard.ZstdError
        self._frame = self._frame_type()
        self._pending, self._offset = memoryview(b""), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._offset == len(self._pending):
            raw = self._file.read(1 << 20)
            if not raw:
                if not self._frame.eof:
                    raise ZstdCut("the file ends inside a zstd frame (cut short?)")
                return 0
            out = []
            while raw:
                if self._frame.eof:  # a new frame follows the finished one
                    self._frame = self._frame_type()
                try:
                    out.append(self._frame.decompress(raw))
                except self._error as e:
                    raise ZstdCut(str(e)) from None
                raw = self._frame.unused_data if self._frame.eof else b""
            self._pending, self._offset = memoryview(b"".join(out)), 0
        n = min(len(buffer), len(self._pending) - self._offset)
        buffer[:n] = self._pending[self._offset:self._offset + n]
        self._offset += n
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def open_bytes(path: Path) -> IO[bytes]:
    """The file's bytes; a name ending in `.gz` is gunzipped and one ending in `.zst` unzstd'ed on the fly (OASST's
    `.jsonl.gz` exports, zstd-compressed hub dumps), never whole in memory. Text is decoded line by line, so that
    one line that is not UTF-8 is one bad record, not a refused file."""
    try:
        if path.name.endswith(".gz"):
            return gzip.open(path, "rb")
        if path.name.endswith(".zst"):
            return io.BufferedReader(ZstdReader(path), 1 << 20)
        return open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None


def _decoded(raw: bytes, path: Path, line_no: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{line_no}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                        f"the file must be UTF-8") from None


def read_records(path: Path, bad: BadRecords) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, object)` for every record of a JSONL or JSON-array file.

    A line that is not UTF-8 or not JSON, or JSON that is not an object, goes to `bad`. Blank lines are ignored.
    """
    with open_bytes(path) as f:
        try:
            line_no, first = 0, b""
            for first in f:
                line_no += 1
                if line_no == 1 and first.startswith(BOM):
                    first = first[len(BOM):]
                if first.strip():
                    break
            if first.lstrip().startswith(b"[") and not path.name.endswith(LINE_SUFFIXES):
                raw = first + f.read()
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    bad_line = line_no + raw.count(NEWLINE, 0, e.start)
                    raise DataError(f"{path}:{bad_line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); the file "
                                    f"must be UTF-8") from None
                yield from _array_records(path, text, line_no, bad)
                return
            if first.strip():
                yield from _line_records(path, [(line_no, first)], bad)
            yield from _line_records(path, enumerate(f, line_no + 1), bad)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise DataError(f"{path}: cannot decode the file (expected UTF-8 JSON, gzip when named .gz): {e}") \
                from None
        except ZstdCut as e:
            raise DataError(f"{path}: cannot decode the file as zstd-compressed JSON (named .zst): {e}") from None
        except OSError as e:
            raise DataError(f"{path}: cannot read: {e.strerror or e}") from None


def _line_records(path: Path, lines, bad: BadRecords) -> Iterator[tuple[int, dict[str, Any]]]:
    loads = json.loads
    for line_no, raw in lines:
        if not raw.strip():
            continue
        try:
            line = _decoded(raw, path, line_no)
        except DataError as e:
            bad.handle(e)
            continue
        try:
            with deep_json():
                record = loads(line)
        except json.JSONDecodeError as e:
            column = min(e.pos, len(line.rstrip("\r\n"))) + 1  # an error at the line's end points at its end
            bad.handle(DataError(f"{path}:{line_no}: not valid JSON: {e.msg} (column {column})"))
            continue
        except RecursionError:
            bad.handle(DataError(f"{path}:{line_no}: {DEEPER}"))
            continue
        if not isinstance(record, dict):
            bad.handle(DataError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}"))
            continue
        yield line_no, record


def _array_records(path: Path, text: str, first_line: int, bad: BadRecords) -> Iterator[tuple[int, dict[str, Any]]]:
    """Elements of one JSON array, decoded one at a time so that each keeps the line it starts on."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted = first_line, 0  # `line` is the line of text[counted]

    def line_of(offset: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, offset)
        counted = offset
        return line

    def skip_space(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    pos = skip_space(pos)
    if pos < len(text) and text[pos] == "]":
        pos += 1
    else:
        while True:
            start = line_of(pos)
            try:
                with deep_json():
                    record, pos = decoder.raw_decode(text, pos)
            except RecursionError:
                raise DataError(f"{path}:{start}: {DEEPER}") from None
            except json.JSONDecodeError as e:
                # Inside one array there is no way to resynchronise, so this cannot be skipped.
                raise DataError(f"{path}:{e.lineno + first_line - 1}: not valid JSON: {e.msg} "
                                f"(column {e.colno}); a JSON array cannot skip a broken element") from None
            if isinstance(record, dict):
                yield start, record
            else:
                bad.handle(DataError(f"{path}:{start}: expected a JSON object, got {type(record).__name__}"))
            pos = skip_space(pos)
            if pos < len(text) and text[pos] == ",":
                pos = skip_space(pos + 1)
                continue
            if pos < len(text) and text[pos] == "]":
                pos += 1
                break
            raise DataError(f"{path}:{line_of(pos)}: not valid JSON: expected ',' or ']' after an array element")
    if skip_space(pos) != len(text):
        raise DataError(f"{path}:{line_of(skip_space(pos))}: not valid JSON: extra data after the array")


def string_field(record: dict[str, Any], key: str, where: str, default: str | None = None,
                 blank: bool = False) -> str:
    """`record[key]` as a string; missing (without a default), not a string, or (unless `blank`) empty or only
    whitespace raises DataError naming the field: an empty prompt or reply would train the model on nothing."""
    value = record.get(key)
    if value is None:  # JSON null is absent, as many exports write an empty optional field
        value = default
    if value is None:
        raise DataError(f"{where}: missing field '{key}' (expected a string)")
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__} {value!r:.60}")
    if not blank and not value.strip():
        raise DataError(f"{where}: field '{key}' is empty; expected text")
    return value
