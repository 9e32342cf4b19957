"""Readers for the interaction file formats kdbench accepts, with errors that name file, line and fix.

Formats (each file optionally gzipped, detected by the ``.gz`` suffix):

* **list** (LightGCN): ``user item item ...`` one user per line, whitespace separated.
* **count-list** (CiteULike ``users.dat``): line k belongs to user k: ``count item item ...``.
* **pairs**: ``user<sep>item[<sep>more columns]`` with sep comma, tab or ``::`` and an optional header line;
  only the first two columns are used (ratings/timestamps are ignored), every line must have the same number of
  columns. Whitespace-separated pairs with extra columns need ``--set data.format=pairs`` (whitespace files are
  read as lists by default).
"""
from __future__ import annotations

import gzip
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .base import DatasetError

if TYPE_CHECKING:
    from typing import TextIO

FORMATS = ("auto", "list", "pairs")


def open_text(path: Path) -> TextIO:
    return gzip.open(path, "rt", encoding="utf-8") if str(path).endswith(".gz") else open(path, encoding="utf-8")


def _lines(path: Path) -> list[str]:
    try:
        with open_text(path) as fh:
            lines = fh.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); "
                           "is it a complete text file (gzip only with a .gz name)?") from exc
    if not any(line.strip() for line in lines):
        raise DatasetError(f"{path}: the file is empty; it must hold at least one interaction")
    return lines


def _int(tok: str, path: Path, lineno: int, what: str) -> int:
    try:
        val = int(tok)
    except ValueError:
        raise DatasetError(f"{path}:{lineno}: {what} {tok!r} is not an integer id; "
                           "kdbench reads integer user/item ids (remap string ids to integers first)") from None
    if val < 0:
        raise DatasetError(f"{path}:{lineno}: {what} {val} is negative; ids must be >= 0")
    return val


def _split_line(line: str, sep: str | None) -> list[str]:
    return [t.strip() for t in line.split(sep)] if sep else line.split()


def detect_format(path: Path, lines: list[str]) -> tuple[str, str | None]:
    """(format, separator): comma, tab or ``::`` separated files (or .csv/.tsv names) are pairs; whitespace
    separated ones are LightGCN lists (a line of two ids reads the same either way)."""
    last = next(ln for ln in reversed(lines) if ln.strip())
    name = path.name.lower().removesuffix(".gz")
    for sep, ext in (("\t", ".tsv"), (",", ".csv"), ("::", None)):
        if sep in last or (ext and name.endswith(ext)):
            return "pairs", sep
    return "list", None


def read_interactions(path: Path, fmt: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Read one interaction file as ([n, 2] int64 pairs in file order, [n] 1-based line numbers)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise DatasetError(f"data.format={fmt!r} is not one of {', '.join(FORMATS)}")
    lines = _lines(path)
    sep = None
    if fmt == "auto":
        fmt, sep = detect_format(path, lines)
    elif fmt == "pairs":
        last = next(ln for ln in reversed(lines) if ln.strip())
        sep = next((c for c in ("\t", ",", "::") if c in last), None)
    users: list[int] = []
    items: list[int] = []
    linenos: list[int] = []
    if fmt == "list":
        for k, line in enumerate(lines, 1):
            toks = line.split()
            if not toks:
                continue
            u = _int(toks[0], path, k, "user id")
            for tok in toks[1:]:
                users.append(u)
                items.append(_int(tok, path, k, "item id"))
                linenos.append(k)
    else:
        ncol = None
        for k, line in enumerate(lines, 1):
            if not line.strip():
                continue
            toks = _split_line(line, sep)
            if ncol is None:
                ncol = len(toks)
                if ncol < 2:
                    raise DatasetError(f"{path}:{k}: expected at least 2 columns (user, item), found {ncol}")
                if not re.fullmatch(r"-?\d+", toks[0]) and k == 1:
                    continue  # a header line
            if len(toks) != ncol:
                raise DatasetError(f"{path}:{k}: expected {ncol} columns like the first line, found {len(toks)}: "
                                   f"{line.strip()[:80]!r}")
            users.append(_int(toks[0], path, k, "user id"))
            items.append(_int(toks[1], path, k, "item id"))
            linenos.append(k)
    if not users:
        raise DatasetError(f"{path}: no interactions found (only a header or users without items)")
    return np.stack([np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)], 1), \
        np.asarray(linenos, dtype=np.int64)


def read_count_lists(path: Path) -> list[np.ndarray]:
    """CiteULike ``users.dat``: line k lists user k's items after a leading count (checked)."""
    lines = _lines(Path(path))
    out = []
    for k, line in enumerate(lines, 1):
        toks = line.split()
        if not toks:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        count = _int(toks[0], path, k, "count")
        items = [_int(t, path, k, "item id") for t in toks[1:]]
        if count != len(items):
            raise DatasetError(f"{path}:{k}: the line starts with count {count} but lists {len(items)} items")
        out.append(np.asarray(items, dtype=np.int64))
    return out


def find_file(folder: Path, stems: tuple[str, ...]) -> Path | None:
    """The first file in ``folder`` named ``<stem>[.ext][.gz]`` for one of ``stems``."""
    if not folder.is_dir():
        return None
    candidates = sorted(os.listdir(folder))
    for stem in stems:
        for name in candidates:
            base = name.removesuffix(".gz")
            if base == stem or (base.startswith(stem + ".") and base.count(".") == 1):
                return folder / name
    return None
