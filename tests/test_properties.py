"""Property-based tests (hypothesis) of everything that reads bytes a user hands us: the CelebA and CSV
label readers and the image decoder.

The contract under test: a reader returns a valid table or raises AttrnetError (never another exception,
never a wrong table); the decoder returns uint8 [C, H, W] at the asked size or raises AttrnetError (the
cache and the predictor count such a file as unreadable). Well-formed inputs must give exactly the table
the generator wrote, and a file with one known defect must be rejected with a message naming its line.

Every test sets max_examples explicitly and runs derandomized without a database, so CI sees the same
inputs on every run; the file runs in well under a minute on a small CPU. Each example writes its file
once, into a folder made once per test with tempfile.
"""

from __future__ import annotations

import io
import math
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from attrnet.data.celeba import ATTR_FILE, IMAGE_DIR, PARTITION_FILE, read_celeba
from attrnet.data.csv_folder import read_csv_folder
from attrnet.data.images import MAX_PIXELS, RESIZE_METHODS, load_image
from attrnet.errors import AttrnetError

# PIL warns about the damaged EXIF blocks random bytes make; that is expected here, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")

# Generated inputs per test; TOTAL_EXAMPLES is what the suite promises (checked below).
N_CELEBA_BYTES, N_CELEBA_WELLFORMED, N_CELEBA_DEFECT, N_CELEBA_MUTATED = 1000, 500, 600, 650
N_CSV_BYTES, N_CSV_WELLFORMED, N_CSV_DEFECT, N_CSV_MUTATED = 1000, 500, 600, 650
N_IMAGE_BYTES, N_IMAGE_VALID, N_IMAGE_MUTATED, N_IMAGE_DECLARED = 1000, 500, 700, 300
TOTAL_EXAMPLES = (N_CELEBA_BYTES + N_CELEBA_WELLFORMED + N_CELEBA_DEFECT + N_CELEBA_MUTATED
                  + N_CSV_BYTES + N_CSV_WELLFORMED + N_CSV_DEFECT + N_CSV_MUTATED
                  + N_IMAGE_BYTES + N_IMAGE_VALID + N_IMAGE_MUTATED + N_IMAGE_DECLARED)


def fixed(max_examples: int):
    """Reproducible settings: a fixed derandomized sequence, no example database, no per-example deadline
    (a shared CI CPU stalls now and then; the file's wall time is what is bounded)."""
    return settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def test_the_suite_generates_at_least_8000_inputs():
    assert TOTAL_EXAMPLES >= 8000


@pytest.fixture(scope="module")
def scratch():
    """scratch(name): one folder per name, made once and reused by every example of a test (module-scoped:
    hypothesis does not reset a function-scoped fixture between examples)."""
    with tempfile.TemporaryDirectory(prefix="attrnet-props-") as base:
        def folder(name: str) -> Path:
            path = Path(base) / name
            path.mkdir(exist_ok=True)
            return path
        yield folder


def fresh_write(path: Path, data: bytes) -> None:
    """Write path as a new file: ext4 flushes a file truncated and rewritten in place when it is closed
    (about 5 ms each, against 0.1 ms for a new file), which would dominate thousands of examples."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


# --- shared checks -------------------------------------------------------------------------------------------

def check_table(table) -> None:
    """What every reader promises of a table it returns."""
    n, m = len(table.files), len(table.names)
    assert n >= 1 and m >= 1
    assert table.labels.dtype == np.float32 and table.labels.shape == (n, m)
    known = table.labels[~np.isnan(table.labels)]
    assert set(np.unique(known).tolist()) <= {0.0, 1.0}
    assert len(set(table.names)) == m, f"repeated attribute names {table.names}"
    assert len(set(table.files)) == n, f"repeated image names {table.files}"
    for s in table.names + table.files:
        assert s and s == s.strip() and "\0" not in s
    if table.partition is not None:
        assert table.partition.dtype == np.int8 and table.partition.shape == (n,)
        assert set(np.unique(table.partition).tolist()) <= {0, 1, 2}


def read_or_error(read, root: Path, text: str | None):
    """The table, or None for an AttrnetError: nothing else may come out of a reader."""
    try:
        table = read(root)
    except AttrnetError as exc:
        assert str(exc).strip() and "Traceback" not in str(exc)
        return None
    assert text is not None, "a file that is not UTF-8 text gave a table"
    check_table(table)
    return table


def as_text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def line_number_of(text: str, index: int) -> int:
    """1-based line of text[index]; \\n, \\r\\n and \\r each end a line."""
    head = text[:index].replace("\r\n", "\n").replace("\r", "\n")
    return head.count("\n") + 1


def same_labels(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(np.isnan(a), np.isnan(b))) \
        and bool(np.array_equal(np.nan_to_num(a, nan=-7), np.nan_to_num(b, nan=-7)))


def picks(length: int):
    """The bytes for `length` uniform picks (see pick): one hypothesis choice instead of `length` draws,
    which made the generators several times slower (a draw costs ~0.1 ms on a loaded CPU). One big
    integer is no substitute: hypothesis keeps wide integers small, so its high digits are nearly always 0."""
    return st.binary(min_size=2 * length, max_size=2 * length)


def pick(data: bytes, choices: list) -> list:
    """One item of choices per two bytes of data."""
    return [choices[int.from_bytes(data[k:k + 2], "little") % len(choices)] for k in range(0, len(data), 2)]


def draw_row(draw, choices: list, length: int) -> list:
    return pick(draw(picks(length)), choices)


# How a file's lines are laid out: newline style, what a blank line holds, BOM, newline after the last row.
LAYOUTS = [(newline, blank, bom, final) for newline in ("\n", "\r\n", "\r") for blank in ("", " ", "\t ", "  ")
           for bom in (False, True) for final in (False, True)]


def rendered(rows: list[str], first_blankable: int, draw) -> tuple[str, list[int]]:
    """Join logical rows into one text with a random layout and up to three blank lines (only before rows
    >= first_blankable); returns the text and the line each row starts on."""
    layout, blank_picks = draw(st.tuples(st.sampled_from(LAYOUTS), picks(3)))
    newline, blank, bom, final_newline = layout
    blanks_before = pick(blank_picks, [None] + list(range(first_blankable, len(rows))))
    out, starts = "\ufeff" if bom else "", []
    for i, row in enumerate(rows):
        out += (blank + newline) * blanks_before.count(i)
        starts.append(line_number_of(out, len(out)))
        out += row + (newline if i < len(rows) - 1 or final_newline else "")
    return out, starts


def wrong_count(draw, m: int) -> int:
    """A number of values from 0 to m + 3 that is not m."""
    k = draw(st.integers(0, m + 2))
    return k + (k >= m)


MUTATION_OPS = ["replace", "insert", "delete", "dup_line", "drop_line", "truncate"]


def as_mutation(data: bytes) -> tuple[str, int, bytes]:
    """Eight bytes read as (operation, position, 1 to 3 bytes to write): one choice per mutation."""
    length = data[4] % 3 + 1
    return MUTATION_OPS[data[0] % len(MUTATION_OPS)], int.from_bytes(data[1:4], "little"), data[5:5 + length]


MUTATIONS = st.lists(st.binary(min_size=8, max_size=8).map(as_mutation), min_size=1, max_size=4)


def mutate(data: bytes, mutations) -> bytes:
    """Byte- and line-level damage: replaced, inserted, deleted bytes, repeated or dropped lines, a cut."""
    for op, pos, chunk in mutations:
        if not data:
            data = chunk
            continue
        i = pos % len(data)
        if op == "replace":
            data = data[:i] + chunk + data[i + len(chunk):]
        elif op == "insert":
            data = data[:i] + chunk + data[i:]
        elif op == "delete":
            data = data[:i] + data[i + len(chunk):]
        elif op == "truncate":
            data = data[:i]
        else:
            lines = data.split(b"\n")
            k = pos % len(lines)
            lines = lines[:k + 1] + lines[k:] if op == "dup_line" else lines[:k] + lines[k + 1:]
            data = b"\n".join(lines)
    return data


# --- CelebA: list_attr_celeba.txt (and list_eval_partition.txt) ----------------------------------------------

# Characters for names: printable ASCII and Latin-1, and Unicode that trips parsers: letters whose case
# changes length (İ, ß, ﬁ), a Kelvin sign, digits int() and isdigit() accept (١, ², ٣), wide and astral
# characters. (Drawn from a list: st.characters() with categories costs ~20x more per character.)
NAME_CHARS = sorted({chr(c) for c in [*range(0x21, 0x7F), *range(0xA1, 0x100)]}
                    | set("İßﬁK\u0661\u00b2\u0663\u2160\u00bd漢字ä\u0301\U00010000\U0001F600"))
# CelebA names and file names: no whitespace, no control characters (the format splits on whitespace).
TOKEN = st.text(st.sampled_from(NAME_CHARS), min_size=1, max_size=4)
CELEBA_VALUE = {"1": 1.0, "-1": 0.0, "0": math.nan}


# How a CelebA row is written: padding before its first token and after its last, the separator (all that
# str.split() takes for whitespace; \x0b and \x0c also end a line for str.splitlines()).
CELEBA_STYLES = [(left, right, sep) for left in ("", " ", "\t") for right in ("", " ", "\t")
                 for sep in (" ", "  ", "\t", " \t", "\x0b", "\x0c", "\u3000", "\xa0")]


@st.composite
def celeba_rows(draw, min_files: int = 1):
    """names, files and value tokens of a well-formed label file."""
    names = draw(st.lists(TOKEN, min_size=1, max_size=4, unique=True))
    files = draw(st.lists(TOKEN, min_size=min_files, max_size=5, unique=True))
    cells = draw_row(draw, list(CELEBA_VALUE), len(names) * len(files))
    return names, files, [cells[i:i + len(names)] for i in range(0, len(cells), len(names))]


def celeba_lines(draw, rows: list[list[str]]) -> list[str]:
    """Each row's tokens joined by a whitespace separator and padded, in the row's own style."""
    styles = draw_row(draw, CELEBA_STYLES, len(rows))
    return [left + sep.join(tokens) + right for tokens, (left, right, sep) in zip(rows, styles)]


@st.composite
def celeba_files(draw):
    """A well-formed CelebA label file (and maybe a partition file) and the table it must give."""
    names, files, values = draw(celeba_rows())
    rows = celeba_lines(draw, [[str(len(files))], names] + [[f] + v for f, v in zip(files, values)])
    text, starts = rendered(rows, 2, draw)
    has_partition, split_picks = draw(st.tuples(st.booleans(), picks(len(files))))
    partition = pick(split_picks, [0, 1, 2]) if has_partition else None
    labels = np.array([[CELEBA_VALUE[v] for v in row] for row in values], dtype=np.float32)
    return {"text": text, "starts": starts, "names": names, "files": files, "values": values,
            "labels": labels, "partition": partition}


def write_celeba(root: Path, attr: bytes, partition: bytes | None = None) -> Path:
    (root / IMAGE_DIR).mkdir(exist_ok=True)
    fresh_write(root / ATTR_FILE, attr)
    part = root / PARTITION_FILE
    if partition is None:
        part.unlink(missing_ok=True)
    else:
        fresh_write(part, partition)
    return root


def partition_text(files: list[str], splits: list[int]) -> str:
    return "".join(f"{f} {s}\n" for f, s in zip(files, splits))


# Random bytes or text, after nothing or after the start of a file (so that some get past line 2).
ANY_TEXT = st.one_of(st.binary(max_size=300), st.text(max_size=120).map(str.encode))
CELEBA_HEADS = st.sampled_from([b"", b"2\n", b"2\nA B\n", b"1\nA A\n", b"x\nA\n"])


@fixed(N_CELEBA_BYTES)
@given(head=CELEBA_HEADS, data=ANY_TEXT, with_partition=st.booleans(), partition=st.binary(max_size=60))
def test_celeba_any_bytes_give_a_table_or_an_attrnet_error(scratch, head, data, with_partition, partition):
    root = scratch("celeba_any_bytes_give_a_table_or_an_attrnet_error")
    attr = head + data
    write_celeba(root, attr, partition if with_partition else None)
    read_or_error(read_celeba, root, as_text(attr))


@fixed(N_CELEBA_WELLFORMED)
@given(case=celeba_files())
def test_celeba_wellformed_files_give_exactly_their_table(scratch, case):
    root = scratch("celeba_wellformed_files_give_exactly_their_table")
    part = case["partition"]
    write_celeba(root, case["text"].encode(),
                 None if part is None else partition_text(case["files"], part).encode())
    table = read_or_error(read_celeba, root, case["text"])
    assert table is not None
    assert table.names == case["names"] and table.files == case["files"]
    assert same_labels(table.labels, case["labels"])
    if part is None:
        assert table.partition is None
    else:
        assert table.partition.tolist() == part


CELEBA_DEFECTS = ["dup_name", "dup_file", "value_count", "bad_value", "not_utf8", "nul", "count_line",
                  "dup_partition"]
MARK = "\ue000"  # a private-use character no generated token holds: where a bad byte goes
BAD_UTF8 = st.sampled_from([b"\xff", b"\xc3(", b"\x80", b"\xed\xa0\x80", b"\xfe"])


@st.composite
def celeba_defects(draw):
    """A well-formed file with one defect: (attr bytes, partition bytes or None, the file and the line an
    error must name, kind)."""
    kind = draw(st.sampled_from(CELEBA_DEFECTS))
    names, files, values = draw(celeba_rows(min_files=2))
    r = draw(st.integers(1, len(files) - 1))  # the image row that carries the defect (never the first)
    count = str(len(files))
    if kind == "dup_name":
        names.insert(draw(st.integers(0, len(names))), names[draw(st.integers(0, len(names) - 1))])
        values = [v + ["1"] for v in values]
    elif kind == "dup_file":
        files[r] = files[draw(st.integers(0, r - 1))]
    elif kind == "value_count":
        values[r] = (values[r] * 4)[:wrong_count(draw, len(names))]
    elif kind == "bad_value":
        values[r][draw(st.integers(0, len(names) - 1))] = draw(TOKEN.filter(lambda t: t not in CELEBA_VALUE
                                                                             and t != "+1"))
    elif kind in ("not_utf8", "nul"):
        values[r][draw(st.integers(0, len(names) - 1))] += MARK
    elif kind == "count_line":
        count = draw(st.sampled_from(["", "x", "1.5", "\u00b2", "-3", "1 2", "A B", "\u0661"]))
    rows = [count] + celeba_lines(draw, [names] + [[f] + v for f, v in zip(files, values)])
    text, starts = rendered(rows, 2, draw)
    line = {"dup_name": 2, "count_line": 1}.get(kind, starts[2 + r])
    bad = draw(BAD_UTF8) if kind == "not_utf8" else b"\0"
    attr = text.encode().replace(MARK.encode(), bad)
    if kind != "dup_partition":
        return attr, None, ATTR_FILE, line, kind
    lines = [f"{f} {split}" for f, split in zip(files, draw_row(draw, [0, 1, 2], len(files)))]
    j = draw(st.integers(0, len(files) - 1))
    at = draw(st.integers(j + 1, len(files)))
    lines.insert(at, f"{files[j]} {draw(st.integers(0, 2))}")
    return attr, ("\n".join(lines) + "\n").encode(), PARTITION_FILE, at + 1, kind


@fixed(N_CELEBA_DEFECT)
@given(case=celeba_defects())
def test_celeba_one_defect_is_an_error_naming_its_line(scratch, case):
    root = scratch("celeba_one_defect_is_an_error_naming_its_line")
    attr, partition, name, line, kind = case
    write_celeba(root, attr, partition)
    with pytest.raises(AttrnetError) as exc:
        read_celeba(root)
    assert f"{root / name}:{line}:" in str(exc.value), (kind, str(exc.value))


@fixed(N_CELEBA_MUTATED)
@given(case=celeba_files(), damage=MUTATIONS, damage_partition=st.booleans())
def test_celeba_damaged_files_give_a_table_or_an_attrnet_error(scratch, case, damage, damage_partition):
    root = scratch("celeba_damaged_files_give_a_table_or_an_attrnet_error")
    attr = case["text"].encode()
    part = None if case["partition"] is None else partition_text(case["files"], case["partition"]).encode()
    if damage_partition and part is not None:
        part = mutate(part, damage)
    else:
        attr = mutate(attr, damage)
    write_celeba(root, attr, part)
    read_or_error(read_celeba, root, as_text(attr))


# --- CSV: labels.csv ----------------------------------------------------------------------------------------

CSV_VALUE = {"1": 1.0, "1.0": 1.0, "true": 1.0, "yes": 1.0, "y": 1.0,
             "0": 0.0, "0.0": 0.0, "-1": 0.0, "-1.0": 0.0, "false": 0.0, "no": 0.0, "n": 0.0,
             "": math.nan, "nan": math.nan, "na": math.nan, "?": math.nan, "none": math.nan, "null": math.nan}
# Names and image names may hold commas, quotes and inner spaces (then quoted), never control characters.
CSV_NAME = st.text(st.sampled_from(NAME_CHARS + [" ", "\xa0", "\u3000"]), min_size=1, max_size=5).map(
    str.strip).filter(bool)
# How a spreadsheet may write a cell: padding either side, quoted or not (quoted anyway when it must be).
CSV_STYLES = [(left, right, quoted) for left in ("", " ", "  ") for right in ("", " ", "\t")
              for quoted in (False, True)]


def styled(value: str, style: tuple[str, str, bool]) -> str:
    left, right, quoted = style
    padded = left + value + right
    if quoted or any(c in padded for c in ',"\n\r'):
        return '"' + padded.replace('"', '""') + '"'
    return padded


# Every way a label value may be written, with the value it stands for (a table's cells are picked from
# this list in one draw).
CSV_CELLS = [(styled(case(key), style), value) for key, value in CSV_VALUE.items()
             for case in (str.lower, str.upper, str.capitalize) for style in CSV_STYLES]


@st.composite
def csv_field(draw, value: str) -> str:
    """value written the way a spreadsheet might: padded with spaces, in quotes when it must be or by chance."""
    return styled(value, draw(st.sampled_from(CSV_STYLES)))


@st.composite
def csv_table(draw, min_files: int = 1):
    """The cells of a well-formed labels CSV (header first) and the table it must give. In about a third
    of the tables one image name holds a newline: a quoted multi-line record shifts every later line number."""
    names = draw(st.lists(CSV_NAME, min_size=1, max_size=4, unique=True))
    files = draw(st.lists(CSV_NAME, min_size=min_files, max_size=5, unique=True))
    n, m = len(files), len(names)
    multiline, first, cell_picks, style_picks = draw(st.tuples(
        st.integers(-2 * n, n - 1),  # the image name that holds a newline, if >= 0
        st.sampled_from(["image", "file", ""]), picks(n * m), picks(m + 1 + n)))
    all_cells, styles = pick(cell_picks, CSV_CELLS), pick(style_picks, CSV_STYLES)
    header_styles, file_styles = styles[:m + 1], styles[m + 1:]
    files = [f[:1] + "\n" + f[1:] if i == multiline and len(f) > 1 else f for i, f in enumerate(files)]
    cells = [all_cells[i:i + m] for i in range(0, n * m, m)]
    header = [styled(v, style) for v, style in zip([first] + names, header_styles)]
    body = [[styled(f, style)] + [w for w, _ in row] for f, style, row in zip(files, file_styles, cells)]
    labels = np.array([[value for _, value in row] for row in cells], dtype=np.float32)
    return {"names": names, "files": files, "labels": labels, "rows": [header] + body}


@st.composite
def csv_files(draw):
    """A well-formed labels CSV as text, and the table it must give."""
    table = draw(csv_table())
    text, _ = rendered([",".join(row) for row in table["rows"]], 1, draw)
    return {**table, "text": text}


CSV_DEFECTS = ["dup_name", "empty_name", "dup_file", "empty_file", "value_count", "bad_value", "not_utf8", "nul"]


@st.composite
def csv_defects(draw):
    """A well-formed CSV with one defect: (bytes, the line an error must name, kind, cells of that row,
    number of attributes the header names)."""
    kind = draw(st.sampled_from(CSV_DEFECTS))
    table = draw(csv_table(min_files=2))
    rows, names, files = table["rows"], table["names"], table["files"]
    r = draw(st.integers(2, len(rows) - 1))  # a data row, never the first one
    m = len(names)
    if kind in ("dup_name", "empty_name"):
        extra = names[draw(st.integers(0, m - 1))] if kind == "dup_name" else draw(st.sampled_from(["", " "]))
        rows[0].insert(draw(st.integers(1, m + 1)), draw(csv_field(extra)))
        for row in rows[1:]:
            row.append("1")
        m += 1
    elif kind == "dup_file":
        rows[r][0] = draw(csv_field(files[draw(st.integers(0, r - 2))]))
    elif kind == "empty_file":
        rows[r][0] = draw(st.sampled_from(["", " ", '""', '" "']))
        rows[r][1:] = ["1"] * m  # a row of blanks only would be skipped as an empty line
    elif kind == "value_count":
        rows[r][1:] = ["0"] * wrong_count(draw, m)
    elif kind == "bad_value":
        bad = draw(CSV_NAME.filter(lambda t: t.lower() not in CSV_VALUE))
        rows[r][1 + draw(st.integers(0, m - 1))] = draw(csv_field(bad))
    else:
        rows[r][draw(st.integers(0, len(rows[r]) - 1))] += MARK
    text, starts = rendered([",".join(row) for row in rows], 1, draw)
    line = 1 if kind in ("dup_name", "empty_name") else starts[r]
    if kind in ("not_utf8", "nul"):
        line = line_number_of(text, text.index(MARK))
    bad = draw(BAD_UTF8) if kind == "not_utf8" else b"\0"
    return text.encode().replace(MARK.encode(), bad), line, kind, rows[r], m


def write_csv(root: Path, data: bytes) -> Path:
    fresh_write(root / "labels.csv", data)
    return root


CSV_HEADS = st.sampled_from([b"", b"image,A,B\n", b"image,A,A\n", b"image,A,\n", b'image,"A\n'])


@fixed(N_CSV_BYTES)
@given(head=CSV_HEADS, data=ANY_TEXT)
def test_csv_any_bytes_give_a_table_or_an_attrnet_error(scratch, head, data):
    root = scratch("csv_any_bytes_give_a_table_or_an_attrnet_error")
    write_csv(root, head + data)
    read_or_error(read_csv_folder, root, as_text(head + data))


@fixed(N_CSV_WELLFORMED)
@given(case=csv_files())
def test_csv_wellformed_files_give_exactly_their_table(scratch, case):
    root = scratch("csv_wellformed_files_give_exactly_their_table")
    write_csv(root, case["text"].encode())
    table = read_or_error(read_csv_folder, root, case["text"])
    assert table is not None
    assert table.names == case["names"] and table.files == case["files"]
    assert same_labels(table.labels, case["labels"])
    assert table.partition is None


@fixed(N_CSV_DEFECT)
@given(case=csv_defects())
def test_csv_one_defect_is_an_error_naming_its_line(scratch, case):
    root = scratch("csv_one_defect_is_an_error_naming_its_line")
    data, line, kind, row, m = case
    write_csv(root, data)
    with pytest.raises(AttrnetError) as exc:
        read_csv_folder(root)
    msg = str(exc.value)
    assert f"{root / 'labels.csv'}:{line}:" in msg, (kind, msg)
    if kind == "value_count":
        k = len(row) - 1
        assert f"has {k} value{'s' * (k != 1)} but" in msg and f"names {m} attribute{'s' * (m != 1)};" in msg, msg


@fixed(N_CSV_MUTATED)
@given(case=csv_files(), damage=MUTATIONS)
def test_csv_damaged_files_give_a_table_or_an_attrnet_error(scratch, case, damage):
    root = scratch("csv_damaged_files_give_a_table_or_an_attrnet_error")
    data = mutate(case["text"].encode(), damage)
    write_csv(root, data)
    read_or_error(read_csv_folder, root, as_text(data))


# --- image decoding --------------------------------------------------------------------------------------------

DECODED = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")  # the formats load_image decodes
UNSUPPORTED = ("PPM",)                                   # images Pillow opens but we do not: a clean error
MODES = {"PNG": ["RGB", "L", "LA", "RGBA", "P", "1", "I;16"], "JPEG": ["RGB", "L", "CMYK"],
         "GIF": ["P", "L", "RGB"], "WEBP": ["RGB", "RGBA", "L"], "BMP": ["RGB", "L"], "TIFF": ["RGB", "L"],
         "PPM": ["RGB", "L"]}
TARGET = st.tuples(st.integers(8, 20), st.integers(8, 20))  # data.image_size allows 8 to 4096


@st.composite
def images(draw, formats=DECODED + UNSUPPORTED):
    """A small solid-grey image file (GIFs may have several frames): bytes, format, mode, and the 8-bit
    grey level of its first frame."""
    fmt = draw(st.sampled_from(formats))
    mode = draw(st.sampled_from(MODES[fmt]))
    size = (draw(st.integers(1, 24)), draw(st.integers(1, 24)))
    frames = draw(st.integers(1, 3)) if fmt == "GIF" else 1
    colours = [draw(st.integers(0, 65535 if mode == "I;16" else 255)) for _ in range(frames)]
    pics = [_solid(mode, size, c) for c in colours]
    buf = io.BytesIO()
    if frames > 1:
        pics[0].save(buf, fmt, save_all=True, append_images=pics[1:])
    else:
        pics[0].save(buf, fmt)
    return buf.getvalue(), fmt, mode, _grey_level(pics[0])


def _solid(mode: str, size: tuple[int, int], c: int) -> Image.Image:
    """One colour; for colour modes the grey level c in every band (so a grey expectation holds)."""
    if mode in ("RGB", "RGBA", "CMYK"):
        return Image.new(mode, size, (c, c, c, 255) if mode != "RGB" else (c, c, c))
    if mode == "LA":
        return Image.new(mode, size, (c, 255))
    if mode == "P":
        return Image.new("RGB", size, (c, c, c)).convert("P", dither=Image.Dither.NONE)
    if mode == "1":
        return Image.new(mode, size, 255 if c >= 128 else 0)
    return Image.new(mode, size, c)


def _grey_level(pic: Image.Image) -> int:
    """The 8-bit level of a solid-grey picture ("P" maps a grey to its palette's nearest, which is grey;
    16-bit grey keeps its high byte)."""
    if pic.mode == "I;16":
        return pic.getpixel((0, 0)) >> 8
    return pic.convert("RGB").getpixel((0, 0))[0]


def decode_or_error(scratch_dir: Path, data: bytes, target, grayscale: bool, resize: str):
    """load_image's result checked against its contract, or None for an AttrnetError."""
    path = scratch_dir / "image.bin"
    fresh_write(path, data)
    try:
        img = load_image(path, target, grayscale, resize)
    except AttrnetError as exc:
        assert str(path) in str(exc), str(exc)
        return None
    assert img.dtype == torch.uint8
    assert tuple(img.shape) == (1 if grayscale else 3, *target), (tuple(img.shape), target)
    return img


MAGIC = st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
                         b"GIF89a", b"GIF87a", b"RIFF\x20\x00\x00\x00WEBPVP8 ", b"BM", b"II*\x00"])


@fixed(N_IMAGE_BYTES)
@given(magic=MAGIC, data=st.binary(max_size=400), target=TARGET, grayscale=st.booleans(),
       resize=st.sampled_from(RESIZE_METHODS))
def test_decoding_any_bytes_gives_an_image_or_an_attrnet_error(scratch, magic, data, target, grayscale, resize):
    folder = scratch("decoding_any_bytes_gives_an_image_or_an_attrnet_error")
    decode_or_error(folder, magic + data, target, grayscale, resize)


@fixed(N_IMAGE_VALID)
@given(image=images(), target=TARGET, grayscale=st.booleans(), resize=st.sampled_from(RESIZE_METHODS))
def test_decoding_valid_images_gives_their_pixels(scratch, image, target, grayscale, resize):
    folder = scratch("decoding_valid_images_gives_their_pixels")
    data, fmt, mode, level = image
    img = decode_or_error(folder, data, target, grayscale, resize)
    if fmt in UNSUPPORTED:
        assert img is None, f"{fmt} decoded"
        return
    assert img is not None, f"a valid {fmt} {mode} image did not decode"
    # A grey picture keeps its level in every channel and in grey; lossy formats may drift a little.
    tolerance = {"JPEG": 4, "WEBP": 6}.get(fmt, 1)
    if mode != "CMYK":
        pixels = img.numpy().astype(int)
        assert np.abs(pixels - level).max() <= tolerance, (fmt, mode, level, pixels.min(), pixels.max())


@fixed(N_IMAGE_MUTATED)
@given(image=images(DECODED), damage=MUTATIONS, target=TARGET, grayscale=st.booleans(),
       resize=st.sampled_from(RESIZE_METHODS))
def test_decoding_damaged_images_gives_an_image_or_an_attrnet_error(scratch, image, damage, target, grayscale,
                                                                   resize):
    folder = scratch("decoding_damaged_images_gives_an_image_or_an_attrnet_error")
    decode_or_error(folder, mutate(image[0], damage), target, grayscale, resize)


DIMENSION = st.one_of(st.integers(1, 64), st.integers(2**14, 2**16 - 1))


def _with_declared_size(data: bytes, fmt: str, width: int, height: int) -> bytes:
    """The image's header rewritten to claim width x height (the PNG header's checksum kept valid)."""
    if fmt == "PNG":
        ihdr = data[12:16] + struct.pack(">II", width, height) + data[24:29]
        return data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]
    sof = data.find(b"\xff\xc0")
    return data[:sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]


@fixed(N_IMAGE_DECLARED)
@given(fmt=st.sampled_from(["PNG", "JPEG"]), width=DIMENSION, height=DIMENSION, target=TARGET,
       grayscale=st.booleans(), resize=st.sampled_from(RESIZE_METHODS))
def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(scratch, fmt, width, height, target,
                                                                       grayscale, resize):
    """Damaged headers declare sizes up to 65535 x 65535 (12.9 GB as RGB): refused before decoding; long
    strips (65535 x 1) that are allowed go through crop mode without scaling all of their length."""
    folder = scratch("an_image_declaring_too_many_pixels_is_refused_before_decoding")
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 200)).save(buf, fmt)
    data = _with_declared_size(buf.getvalue(), fmt, width, height)
    img = decode_or_error(folder, data, target, grayscale, resize)
    if width * height > MAX_PIXELS:
        assert img is None
