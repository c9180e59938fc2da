"""MovieLens loaders and the importer into Marquee's dataset layout.

Real ratings let every other part (feature jobs, ranker, evaluation, serving) run unchanged on
real data: ratings become `play` events, movies become titles with derived maturity and artwork,
raters become members. Three folder layouts are read:

    100k     u.data (user\\titem\\trating\\tunix_seconds), u.item (pipe, latin-1), optional u.user
    current  ratings.csv, movies.csv (header, quoted titles), optional tags.csv
    1m       ratings.dat, movies.dat, optional users.dat ("::" separated; also the 10M layout)

Decisions about the data's quirks (ml-100k as shipped here has them):
- A rating whose user is not in the user file (u.data has 3 rows for user 0, who is absent from
  u.user) is KEPT and its user becomes a member. Marquee's member record is derived from ratings
  alone (activity, join date), never from the demographic profile, and the current layout has no
  user file at all: "a member is anyone who rated" is the one rule that holds for every layout.
  The manifest counts such members (`members_without_profile`).
- Trailing whitespace (u.data's trailing tab) and blank lines are tolerated and counted.
- A truly malformed line (wrong field count, non-numeric, out-of-range timestamp) is an ERROR
  naming the file and line: silently skipping ratings would shift every offline metric, and
  MovieLens ships clean, so a bad line means a damaged copy someone should look at.
- Duplicate (user, item, timestamp) ratings keep the first in file order (their event ids
  would collide otherwise); the manifest counts the ones dropped.
- A rating for an item missing from the movie file is an error naming the ids, how many
  ratings reference them and the file (a title needs a name); `drop_unknown_items`
  (`--drop-unknown-items`) drops those ratings instead, counted in
  `stats['dropped_ratings_unknown_item']` and the manifest. Unknown users are not treated
  the same way: they are kept, as said above (ml-100k has three such ratings).
- The 100K "unknown" genre flag and the current layout's "(no genres listed)" both mean no genre.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from marquee.home import Paths
from marquee.dataset import Dataset, DatasetError, load_dataset, write_dataset
from marquee.schema import (
    ARTWORK_SCHEMA,
    ARTWORK_THEMES,
    DATASET_FILES,
    EVENTS_DIR,
    MEMBER_SCHEMA,
    STORED_EVENT_SCHEMA,
    TIMESTAMP,
    TITLE_SCHEMA,
)

# layout -> (ratings file, movies file, optional users file, optional tags file)
LAYOUT_FILES: dict[str, tuple[str, str, str | None, str | None]] = {
    "100k": ("u.data", "u.item", "u.user", None),
    "current": ("ratings.csv", "movies.csv", None, "tags.csv"),
    "1m": ("ratings.dat", "movies.dat", "users.dat", None),
}

GENRES_100K: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
NO_GENRE = frozenset({"unknown", "(no genres listed)", ""})

# Maturity is derived from genres (MovieLens has no rating): the mature genres win over the
# family ones so a kids' profile never sees an animated horror film.
MATURE_GENRES = frozenset({"Horror", "Crime", "Thriller"})
FAMILY_GENRES = frozenset({"Children's", "Children", "Animation"})
MATURITY_MATURE, MATURITY_FAMILY, MATURITY_DEFAULT = 3, 1, 2

# Artwork themes follow genres so the artwork bandit has something real to learn; every title
# gets at least three variants (padded in this order) and at most six.
THEME_BY_GENRE: dict[str, str] = {
    "Action": "action", "War": "action", "Sci-Fi": "action",
    "Adventure": "scenic", "Western": "scenic", "Fantasy": "scenic", "Documentary": "scenic",
    "IMAX": "scenic",
    "Romance": "romance",
    "Comedy": "comedy",
    "Horror": "dark", "Thriller": "dark", "Film-Noir": "dark", "Crime": "dark", "Mystery": "dark",
    "Children's": "family", "Children": "family", "Animation": "family",
    "Drama": "character",
    "Musical": "ensemble",
}
THEME_PADDING: tuple[str, ...] = ("scenic", "ensemble", "character")
MIN_ARTWORK, MAX_ARTWORK = 3, 6
EVENT_CHUNK_ROWS = 1_000_000
DROP_UNKNOWN_ITEMS_FLAG = "--drop-unknown-items"  # on import-movielens and eval
UNKNOWN_ITEM_IDS_SHOWN = 5  # ids a refusal or a drop note names

# Same plausibility window as marquee.schema's event timestamps (1990..2100), in seconds.
_MIN_TS_S = 631_152_000
_MAX_TS_S = 4_102_444_800
_RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
_RATING_TYPES = {"user_id": pa.int64(), "item_id": pa.int64(), "rating": pa.float64(),
                 "timestamp": pa.int64()}
_INT_RE = r"^\s*[+-]?\d+\s*$"
_FLOAT_RE = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
_TITLE_YEAR_RE = re.compile(r"^(.*?)\s*\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)\s*$")
_ARTICLE_RE = re.compile(r"^(.*), (The|A|An)$")
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}

assert set(THEME_BY_GENRE.values()) <= set(ARTWORK_THEMES)
assert set(THEME_PADDING) <= set(ARTWORK_THEMES)

RATINGS_SCHEMA = pa.schema([
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("rating", pa.float64(), nullable=False),
    pa.field("timestamp", pa.timestamp("s", tz="UTC"), nullable=False),
])
ITEMS_SCHEMA = pa.schema([
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("title", pa.string(), nullable=False),  # as in the file, "Toy Story (1995)"
    pa.field("name", pa.string(), nullable=False),  # "Toy Story"; "The Usual Suspects"
    pa.field("year", pa.int32()),
    pa.field("release_date", pa.date32()),
    pa.field("genres", pa.list_(pa.string()), nullable=False),
])
USERS_SCHEMA = pa.schema([
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("age", pa.int32()),
    pa.field("gender", pa.string()),
    pa.field("occupation", pa.string()),
    pa.field("zip", pa.string()),
])
INTERACTIONS_SCHEMA = pa.schema([
    pa.field("member_id", pa.int64(), nullable=False),
    pa.field("title_id", pa.int64(), nullable=False),
    pa.field("timestamp", TIMESTAMP, nullable=False),
    pa.field("value", pa.float64()),
])


class MovieLensError(ValueError):
    """A MovieLens folder is missing, of no known layout, or holds a malformed line (named)."""


@dataclass
class MovieLens:
    """One MovieLens folder, parsed. `ratings` is deduplicated and sorted by (timestamp, file
    line); `stats` counts what the loader tolerated (blank lines, repaired lines, duplicates)."""

    path: Path
    layout: str
    ratings: pa.Table  # RATINGS_SCHEMA
    items: pa.Table  # ITEMS_SCHEMA
    users: pa.Table | None = None  # USERS_SCHEMA, when the layout has a user file
    tags: pa.Table | None = None  # user_id, item_id, tag, timestamp (current layout, optional)
    stats: dict[str, int] = field(default_factory=dict)
    unknown_item_ids: list[int] = field(default_factory=list)  # rated, not in the movie file


# ---------------------------------------------------------------------------------------------
# Layout detection
# ---------------------------------------------------------------------------------------------


def _expected_files() -> str:
    return "; ".join(f"{ratings} + {movies} ({layout} layout)"
                     for layout, (ratings, movies, _, _) in LAYOUT_FILES.items())


def detect_layout(path: Path | str) -> str:
    """'100k', 'current' or '1m', from which ratings file the folder holds."""
    path = Path(path)
    if not path.exists():
        raise MovieLensError(f"{path}: no such folder (expected a MovieLens folder holding "
                             f"{_expected_files()})")
    if not path.is_dir():
        raise MovieLensError(f"{path}: not a folder (expected a MovieLens folder holding "
                             f"{_expected_files()})")
    for layout, (ratings, movies, _, _) in LAYOUT_FILES.items():
        if (path / ratings).is_file():
            if not (path / movies).is_file():
                raise MovieLensError(f"{path}: has {ratings} but not {movies} (the {layout} "
                                     f"layout needs both)")
            return layout
    raise MovieLensError(f"{path}: not a MovieLens folder; expected {_expected_files()}")


# ---------------------------------------------------------------------------------------------
# Ratings: pyarrow.csv fast path, exact file:line errors
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RatingsFormat:
    delimiter: str  # the single character pyarrow splits on
    separator: str  # the real field separator ("::" for the 1M layout)
    header: str | None  # expected first line, or None


_RATINGS_FORMATS = {
    "100k": _RatingsFormat("\t", "\t", None),
    "current": _RatingsFormat(",", ",", "userId,movieId,rating,timestamp"),
    "1m": _RatingsFormat(":", "::", None),
}


def _read_ratings(file: Path, fmt: _RatingsFormat) -> tuple[pa.Table, dict[str, int]]:
    """Ratings in file order with a `line` column (1-based file line). Read single-threaded so
    pyarrow reports line numbers for the rows it cannot split (those are repaired or rejected
    here in Python); blank lines come back as all-null rows and are dropped."""
    first_line = 1
    if fmt.header is not None:
        with open(file, encoding="utf-8", errors="replace") as fh:
            head = fh.readline().strip().lstrip("\ufeff")
        if head != fmt.header:
            raise MovieLensError(f"{file}:1: expected the header {fmt.header!r}, got {head!r}")
        first_line = 2
    if fmt.separator == "::":  # 'a::b' splits on ':' into a, '', b: name the empty columns
        names = ["user_id", "_1", "item_id", "_2", "rating", "_3", "timestamp"]
    else:
        names = list(_RATING_COLUMNS)
    invalid: list[tuple[int, str]] = []

    def on_invalid(row) -> str:
        invalid.append((row.number, row.text))
        return "skip"

    def read(column_types: dict[str, pa.DataType]) -> pa.Table:
        return pacsv.read_csv(
            file,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=first_line - 1,
                                           use_threads=False, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter=fmt.delimiter, quote_char=False,
                                             ignore_empty_lines=False,
                                             invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types=column_types,
                                                 include_columns=list(_RATING_COLUMNS),
                                                 strings_can_be_null=True),
        )

    try:
        table = read(_RATING_TYPES)
    except pa.ArrowInvalid as exc:  # pyarrow names the column, not the line: find the line
        invalid.clear()
        raw = read({name: pa.string() for name in _RATING_COLUMNS})
        found = _first_unparsable(file, raw, _row_lines(first_line, raw.num_rows, invalid))
        if found is None:
            raise MovieLensError(f"{file}: {exc}") from None
        line, message = found
        _repair_rows(file, fmt, [row for row in invalid if row[0] < line])  # an earlier error wins
        raise MovieLensError(message) from None
    lines = _row_lines(first_line, table.num_rows, invalid)
    table = table.append_column("line", pa.array(lines, pa.int64()))

    # Blank lines are all-null rows; a row with only some fields missing is malformed.
    nulls = np.zeros(table.num_rows, dtype=np.int8)
    for name in _RATING_COLUMNS:
        nulls += table.column(name).is_null().to_numpy(zero_copy_only=False).astype(np.int8)
    partial = np.flatnonzero((nulls > 0) & (nulls < len(_RATING_COLUMNS)))
    if partial.size:
        line = int(lines[partial[0]])
        raise MovieLensError(f"{file}:{line}: empty field (expected user, item, rating, timestamp)")
    blank = int(np.count_nonzero(nulls == len(_RATING_COLUMNS)))
    if blank:
        table = table.filter(pa.array(nulls == 0))

    repaired, blank_invalid = _repair_rows(file, fmt, invalid)
    if repaired:
        table = pa.concat_tables([table, pa.Table.from_pylist(repaired, schema=table.schema)])
    _check_ranges(file, table)
    stats = {"ratings_read": table.num_rows, "blank_lines": blank + blank_invalid,
             "lines_repaired": len(repaired)}
    return table, stats


def _row_lines(first_line: int, num_rows: int, invalid: list[tuple[int, str]]) -> np.ndarray:
    """File line of each parsed row: every line from `first_line` on, minus the skipped ones."""
    every = np.arange(first_line, first_line + num_rows + len(invalid), dtype=np.int64)
    if not invalid:
        return every
    skipped = np.array([number for number, _ in invalid], dtype=np.int64)
    return every[~np.isin(every, skipped)]


def _repair_rows(file: Path, fmt: _RatingsFormat, invalid: list[tuple[int, str]]):
    """Rows pyarrow could not split: fine after stripping trailing whitespace, else an error."""
    repaired, blank = [], 0
    for number, text in invalid:
        stripped = text.rstrip()
        if not stripped:
            blank += 1
            continue
        fields = stripped.split(fmt.separator)
        if len(fields) != len(_RATING_COLUMNS):
            raise MovieLensError(f"{file}:{number}: expected {len(_RATING_COLUMNS)} fields "
                                 f"(user, item, rating, timestamp), got {len(fields)}: {text!r}")
        try:
            user, item, ts = int(fields[0]), int(fields[1]), int(fields[3])
            rating = float(fields[2])
        except ValueError:
            raise MovieLensError(f"{file}:{number}: not a number in {text!r} (expected integer "
                                 f"user, item, timestamp and a numeric rating)") from None
        repaired.append({"user_id": user, "item_id": item, "rating": rating, "timestamp": ts,
                         "line": number})
    return repaired, blank


def _first_unparsable(file: Path, raw: pa.Table, lines: np.ndarray) -> tuple[int, str] | None:
    """After a failed typed read: the first field that is not a number, as (line, message)."""
    first: tuple[int, str] | None = None
    for name in _RATING_COLUMNS:
        column = raw.column(name)
        pattern = _FLOAT_RE if name == "rating" else _INT_RE
        ok = pc.or_kleene(pc.match_substring_regex(column, pattern), column.is_null())
        bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
        if bad.size and (first is None or lines[bad[0]] < first[0]):
            line, value = int(lines[bad[0]]), column[int(bad[0])].as_py()
            kind = "a number" if name == "rating" else "an integer"
            first = (line, f"{file}:{line}: {name} is not {kind}: {value!r}")
    return first


def _check_ranges(file: Path, table: pa.Table) -> None:
    checks = [
        ("user_id", pc.less(table.column("user_id"), 0), "a negative user id"),
        ("item_id", pc.less(table.column("item_id"), 0), "a negative item id"),
        ("rating", pc.invert(pc.is_finite(table.column("rating"))), "a rating that is not finite"),
        ("timestamp", pc.or_(pc.less(table.column("timestamp"), _MIN_TS_S),
                             pc.greater_equal(table.column("timestamp"), _MAX_TS_S)),
         "a timestamp outside 1990..2100 (expected unix seconds)"),
    ]
    for name, bad, what in checks:
        if pc.any(bad).as_py():
            row = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
            line = table.column("line")[row].as_py()
            raise MovieLensError(f"{file}:{line}: {what}: {table.column(name)[row].as_py()!r}")


def _dedupe_and_sort(table: pa.Table) -> tuple[pa.Table, int]:
    """Of equal (user, item, timestamp) keep the first line; then order by (timestamp, line).
    File order breaks ties in time (MovieLens has many same-second ratings): it is what the
    published protocol figures use, and it does not depend on how ids happen to be numbered."""
    order = pc.sort_indices(table, sort_keys=[("timestamp", "ascending"), ("user_id", "ascending"),
                                              ("item_id", "ascending"), ("line", "ascending")])
    table = table.take(order)
    user, item, ts = (table.column(c).to_numpy() for c in ("user_id", "item_id", "timestamp"))
    duplicate = np.zeros(table.num_rows, dtype=bool)
    duplicate[1:] = (user[1:] == user[:-1]) & (item[1:] == item[:-1]) & (ts[1:] == ts[:-1])
    dropped = int(duplicate.sum())
    if dropped:
        table = table.filter(pa.array(~duplicate))
    table = table.take(pc.sort_indices(table, sort_keys=[("timestamp", "ascending"), ("line", "ascending")]))
    ratings = pa.table({
        "user_id": table.column("user_id"),
        "item_id": table.column("item_id"),
        "rating": table.column("rating"),
        "timestamp": table.column("timestamp").cast(pa.timestamp("s", tz="UTC")),
    }, schema=RATINGS_SCHEMA)
    return ratings, dropped


# ---------------------------------------------------------------------------------------------
# Movies, users, tags (small files: plain Python with exact line numbers)
# ---------------------------------------------------------------------------------------------


def split_title(title: str) -> tuple[str, int | None]:
    """'Usual Suspects, The (1995)' -> ('The Usual Suspects', 1995); no year suffix -> None."""
    title = title.strip()
    year = None
    match = _TITLE_YEAR_RE.match(title)
    if match and 1870 <= int(match.group(2)) <= 2100:
        title, year = match.group(1).strip(), int(match.group(2))
    article = _ARTICLE_RE.match(title)
    if article:
        title = f"{article.group(2)} {article.group(1)}"
    return title or "untitled", year


def _read_text(file: Path, encoding: str | None) -> list[str]:
    data = file.read_bytes()
    if encoding is None:  # utf-8 when it decodes, else the latin-1 the older releases use
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")
    else:
        text = data.decode(encoding)
    return text.lstrip("\ufeff").splitlines()


def _int(file: Path, number: int, what: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise MovieLensError(f"{file}:{number}: {what} is not an integer: {value!r}") from None


def _parse_release_date(file: Path, number: int, value: str) -> date | None:
    """u.item's '01-Jan-1995' (month names parsed by hand: strptime's %b follows the locale)."""
    value = value.strip()
    if not value:
        return None
    try:
        day, month, year = value.split("-")
        return date(int(year), _MONTHS[month.lower()], int(day))
    except (ValueError, KeyError):
        raise MovieLensError(
            f"{file}:{number}: release date is not DD-Mon-YYYY: {value!r}") from None


def _item_row(item_id: int, title: str, genres: list[str], release_date: date | None) -> dict:
    name, year = split_title(title)
    if year is None and release_date is not None:
        year = release_date.year
    genres = [g for g in genres if g not in NO_GENRE]
    return {"item_id": item_id, "title": title, "name": name, "year": year,
            "release_date": release_date, "genres": genres}


def _genre_order(folder: Path) -> tuple[str, ...]:
    """u.genre when present (the authoritative order of u.item's flags), else the 100K order."""
    file = folder / "u.genre"
    if not file.is_file():
        return GENRES_100K
    pairs = [line.rstrip().split("|") for line in _read_text(file, "latin-1") if line.strip()]
    try:
        order = {int(index): name for name, index in pairs}
        return tuple(order[i] for i in range(len(order)))
    except (ValueError, KeyError):
        raise MovieLensError(f"{file}: expected lines 'genre|index' with indexes 0..n-1") from None


def _read_u_item(file: Path) -> list[dict]:
    genres = _genre_order(file.parent)
    expected = 5 + len(genres)
    rows = []
    for number, line in enumerate(_read_text(file, "latin-1"), 1):
        if not line.strip():
            continue
        fields = line.rstrip().split("|")
        if len(fields) != expected:
            raise MovieLensError(f"{file}:{number}: expected {expected} '|'-separated fields "
                                 f"(id|title|release date|video date|url|{len(genres)} genre "
                                 f"flags), got {len(fields)}")
        flags = fields[5:]
        if any(flag not in ("0", "1") for flag in flags):
            raise MovieLensError(f"{file}:{number}: genre flags must be 0 or 1, got {flags}")
        rows.append(_item_row(
            _int(file, number, "movie id", fields[0]), fields[1],
            [g for g, flag in zip(genres, flags) if flag == "1"],
            _parse_release_date(file, number, fields[2]),
        ))
    return rows


def _read_movies_dat(file: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(_read_text(file, None), 1):
        if not line.strip():
            continue
        fields = line.rstrip().split("::")
        if len(fields) != 3:
            raise MovieLensError(f"{file}:{number}: expected 3 '::'-separated fields "
                                 f"(MovieID::Title::Genres), got {len(fields)}")
        rows.append(_item_row(_int(file, number, "movie id", fields[0]), fields[1],
                              fields[2].split("|"), None))
    return rows


def _read_movies_csv(file: Path) -> list[dict]:
    header = "movieId,title,genres"
    with open(file, encoding="utf-8", errors="replace") as fh:
        head = fh.readline().strip().lstrip("\ufeff")
    if head != header:
        raise MovieLensError(f"{file}:1: expected the header {header!r}, got {head!r}")
    invalid: list[tuple[int, str]] = []

    def on_invalid(row) -> str:
        invalid.append((row.number, row.text))
        return "skip"

    try:
        table = pacsv.read_csv(
            file,
            read_options=pacsv.ReadOptions(column_names=["movieId", "title", "genres"],
                                           skip_rows=1, use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in
                                                               ("movieId", "title", "genres")}),
        )
    except pa.ArrowInvalid as exc:  # e.g. bytes that are not UTF-8
        raise MovieLensError(f"{file}: {exc}") from None
    if invalid:
        number, text = invalid[0]
        raise MovieLensError(f"{file}:{number}: expected 3 fields (movieId,title,genres; quote "
                             f"titles holding commas), got {text!r}")
    rows = []
    lines = _row_lines(2, table.num_rows, [])
    for number, (movie_id, title, genres) in zip(
            lines.tolist(), zip(*(table.column(c).to_pylist() for c in table.column_names))):
        rows.append(_item_row(_int(file, number, "movieId", movie_id), title,
                              genres.split("|"), None))
    return rows


def _items_table(file: Path, rows: list[dict]) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=ITEMS_SCHEMA)
    ids = table.column("item_id")
    if pc.count_distinct(ids).as_py() != table.num_rows:
        counts = pc.value_counts(ids)
        dup = [v["values"] for v in counts.to_pylist() if v["counts"] > 1][:5]
        raise MovieLensError(f"{file}: movie id(s) listed more than once: {dup}")
    return table.sort_by("item_id")


def _read_users(file: Path, layout: str) -> pa.Table:
    """u.user (id|age|gender|occupation|zip) or users.dat (id::gender::age::occupation::zip)."""
    separator = "|" if layout == "100k" else "::"
    rows = []
    for number, line in enumerate(_read_text(file, None), 1):
        if not line.strip():
            continue
        fields = line.rstrip().split(separator)
        if len(fields) != 5:
            raise MovieLensError(f"{file}:{number}: expected 5 {separator!r}-separated fields, "
                                 f"got {len(fields)}")
        if layout == "100k":
            user, age, gender, occupation, zip_code = fields
        else:
            user, gender, age, occupation, zip_code = fields
        rows.append({"user_id": _int(file, number, "user id", user),
                     "age": _int(file, number, "age", age), "gender": gender,
                     "occupation": occupation, "zip": zip_code})
    return pa.Table.from_pylist(rows, schema=USERS_SCHEMA).sort_by("user_id")


def _read_tags(file: Path) -> pa.Table:
    try:
        table = pacsv.read_csv(file, convert_options=pacsv.ConvertOptions(column_types={
            "userId": pa.int64(), "movieId": pa.int64(), "tag": pa.string(),
            "timestamp": pa.int64()}))
        return pa.table({
            "user_id": table.column("userId"), "item_id": table.column("movieId"),
            "tag": table.column("tag"),
            "timestamp": table.column("timestamp").cast(pa.timestamp("s", tz="UTC")),
        })
    except (pa.ArrowInvalid, KeyError) as exc:
        raise MovieLensError(
            f"{file}: expected columns userId,movieId,tag,timestamp: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Public loading
# ---------------------------------------------------------------------------------------------


def _without_unknown_items(ratings: pa.Table, items: pa.Table, ratings_file: Path,
                           movies_file: Path, drop: bool) -> tuple[pa.Table, list[int]]:
    """Ratings whose item is in the movie file, and the sorted ids of those that are not; with
    `drop` off, any unknown item is a MovieLensError naming the ids, the count and the flag."""
    unknown = pc.invert(pc.is_in(ratings.column("item_id"), value_set=items.column("item_id")))
    n_unknown = pc.sum(unknown).as_py() or 0
    if not n_unknown:
        return ratings, []
    ids = pc.unique(pc.filter(ratings.column("item_id"), unknown)).sort().to_pylist()
    if not drop:
        shown = ", ".join(map(str, ids[:UNKNOWN_ITEM_IDS_SHOWN]))
        hidden = len(ids) - UNKNOWN_ITEM_IDS_SHOWN
        more = f" and {hidden} more" if hidden > 0 else ""
        raise MovieLensError(
            f"{ratings_file}: {n_unknown} rating(s) reference {len(ids)} item id(s) missing from "
            f"{movies_file}: {shown}{more}; pass {DROP_UNKNOWN_ITEMS_FLAG} "
            f"(drop_unknown_items=True) to drop those ratings and count them")
    return ratings.filter(pc.invert(unknown)), ids


def load_movielens(path: Path | str, *, drop_unknown_items: bool = False) -> MovieLens:
    """Parse a MovieLens folder of any supported layout (see the module docstring). A rating of
    an item missing from the movie file is an error unless `drop_unknown_items`, which drops
    it and counts it in stats['dropped_ratings_unknown_item']."""
    path = Path(path)
    layout = detect_layout(path)
    ratings_name, movies_name, users_name, tags_name = LAYOUT_FILES[layout]
    raw, stats = _read_ratings(path / ratings_name, _RATINGS_FORMATS[layout])
    ratings, dropped = _dedupe_and_sort(raw)
    stats["duplicates_dropped"] = dropped

    movies_file = path / movies_name
    reader = {"100k": _read_u_item, "current": _read_movies_csv, "1m": _read_movies_dat}[layout]
    items = _items_table(movies_file, reader(movies_file))
    kept, unknown_ids = _without_unknown_items(ratings, items, path / ratings_name, movies_file,
                                               drop_unknown_items)
    stats["dropped_ratings_unknown_item"] = ratings.num_rows - kept.num_rows
    ratings = kept

    users = None
    if users_name and (path / users_name).is_file():
        users = _read_users(path / users_name, layout)
    tags = None
    if tags_name and (path / tags_name).is_file():
        tags = _read_tags(path / tags_name)
    return MovieLens(path=path, layout=layout, ratings=ratings, items=items, users=users,
                     tags=tags, stats=stats, unknown_item_ids=unknown_ids)


# ---------------------------------------------------------------------------------------------
# Conversion into Marquee's tables
# ---------------------------------------------------------------------------------------------


def maturity_for_genres(genres: list[str]) -> int:
    """Horror/Crime/Thriller -> 3 (mature), else Children's/Animation -> 1 (family), else 2."""
    if MATURE_GENRES.intersection(genres):
        return MATURITY_MATURE
    if FAMILY_GENRES.intersection(genres):
        return MATURITY_FAMILY
    return MATURITY_DEFAULT


def artwork_themes_for_genres(genres: list[str]) -> list[str]:
    """The genres' themes in genre order, deduplicated, padded to 3, capped at 6."""
    themes: list[str] = []
    for genre in genres:
        theme = THEME_BY_GENRE.get(genre)
        if theme and theme not in themes:
            themes.append(theme)
    for theme in THEME_PADDING:
        if len(themes) >= MIN_ARTWORK:
            break
        if theme not in themes:
            themes.append(theme)
    return themes[:MAX_ARTWORK]


def titles_table(items: pa.Table) -> pa.Table:
    """TITLE_SCHEMA rows for MovieLens items (every title a US movie of unknown runtime)."""
    n = items.num_rows
    genres = items.column("genres").to_pylist()
    return pa.table({
        "title_id": items.column("item_id"),
        "name": items.column("name"),
        "genres": items.column("genres"),
        "release_year": items.column("year"),
        "release_date": items.column("release_date"),
        "maturity": pa.array([maturity_for_genres(g) for g in genres], pa.int8()),
        "runtime_min": pa.nulls(n, pa.int32()),
        "countries": pa.array([["US"]] * n, pa.list_(pa.string())),
        "kind": pa.array(["movie"] * n, pa.string()),
        "series_id": pa.nulls(n, pa.int64()),
        "season": pa.nulls(n, pa.int32()),
        "episodes": pa.array(np.ones(n, dtype=np.int32)),
    }, schema=TITLE_SCHEMA)


def artwork_table(items: pa.Table) -> pa.Table:
    """ARTWORK_SCHEMA rows: 3-6 variants per title, ids f"{title_id}-{k}"."""
    ids, title_ids, themes = [], [], []
    for item_id, genres in zip(items.column("item_id").to_pylist(),
                               items.column("genres").to_pylist()):
        for k, theme in enumerate(artwork_themes_for_genres(genres)):
            ids.append(f"{item_id}-{k}")
            title_ids.append(item_id)
            themes.append(theme)
    return pa.table({"artwork_id": ids, "title_id": pa.array(title_ids, pa.int64()),
                     "theme": themes}, schema=ARTWORK_SCHEMA)


def members_table(ratings: pa.Table, users: pa.Table | None = None) -> pa.Table:
    """MEMBER_SCHEMA rows for every rater plus every profiled user (sorted by id). activity =
    ratings per active UTC day; join_date = UTC day of the first rating (null if none)."""
    seconds = ratings.column("timestamp").cast(pa.int64())
    per_user = pa.table({
        "member_id": ratings.column("user_id"),
        "day": pc.divide(seconds, 86_400),
        "first": seconds,
    }).group_by("member_id").aggregate([("day", "count_distinct"), ("day", "count"),
                                        ("first", "min")])
    ids = per_user.column("member_id")
    if users is not None:
        ids = pa.chunked_array([ids, users.column("user_id")])
    ids = pc.unique(ids).sort()
    index = pc.index_in(ids, value_set=per_user.column("member_id"))  # null: no ratings
    plays = pc.fill_null(pc.take(per_user.column("day_count"), index), 0).to_numpy()
    days = pc.fill_null(pc.take(per_user.column("day_count_distinct"), index), 1).to_numpy()
    activity = (plays / np.maximum(days, 1)).astype(np.float32)
    first = pc.take(per_user.column("first_min"), index)
    join_date = first.cast(pa.timestamp("s", tz="UTC")).cast(pa.date32())
    n = len(ids)
    return pa.table({
        "member_id": ids,
        "country": pa.array(["US"] * n, pa.string()),
        "maturity": pa.array(np.full(n, 3, dtype=np.int8)),
        "language": pa.array(["en"] * n, pa.string()),
        "devices": pa.array([["web"]] * n, pa.list_(pa.string())),
        "taste": pa.nulls(n, pa.list_(pa.float32())),
        "activity": pa.array(activity, pa.float32()),
        "join_date": join_date,
    }, schema=MEMBER_SCHEMA)


def events_table(ratings: pa.Table, first_seq: int = 0) -> pa.Table:
    """STORED_EVENT_SCHEMA `play` events, one per rating (value = rating), seq counting up from
    `first_seq` in the ratings' (timestamp, file line) order; event_id
    f"ml-{user}-{item}-{unix_seconds}"."""
    n = ratings.num_rows
    seconds = ratings.column("timestamp").cast(pa.int64())
    event_id = pc.binary_join_element_wise(
        "ml", ratings.column("user_id").cast(pa.string()),
        ratings.column("item_id").cast(pa.string()), seconds.cast(pa.string()), "-")
    columns: dict[str, Any] = {
        "event_id": event_id,
        "member_id": ratings.column("user_id"),
        "title_id": ratings.column("item_id"),
        "type": pa.array(["play"] * n, pa.string()),
        "timestamp": pc.multiply(seconds, 1000).cast(TIMESTAMP),
        "country": pa.array(["US"] * n, pa.string()),
        "value": ratings.column("rating"),
        "seq": pa.array(np.arange(first_seq, first_seq + n, dtype=np.int64)),
    }
    arrays = [columns[f.name] if f.name in columns else pa.nulls(n, f.type)
              for f in STORED_EVENT_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=STORED_EVENT_SCHEMA)


def iter_events(ratings: pa.Table, chunk_rows: int = EVENT_CHUNK_ROWS) -> Iterator[pa.Table]:
    """`events_table` in chunks: the event rows are ~6x the ratings' bytes, so the 25M release
    is never materialised as events all at once."""
    for start in range(0, ratings.num_rows, chunk_rows):
        yield events_table(ratings.slice(start, chunk_rows), first_seq=start)


def _iso(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat()


def default_out(path: Path | str) -> Path:
    """Where `import-movielens` writes by default: MARQUEE_HOME/movielens/<folder name>."""
    return Paths().movielens(path)


def _check_replaceable(out: Path, source: Path) -> None:
    """write_dataset replaces `out` wholesale: never let that be the MovieLens folder itself (or
    a folder holding it), nor some other non-empty folder that is not a Marquee dataset."""
    out_abs, source_abs = out.resolve(), source.resolve()
    if out_abs == source_abs or out_abs in source_abs.parents:
        raise MovieLensError(f"--out {out} would replace the MovieLens folder {source}; "
                             f"choose another directory")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _is_dataset_dir(out))):
        raise MovieLensError(f"refusing to replace {out}: it exists and is not a Marquee dataset "
                             f"(expected {', '.join(DATASET_FILES)}, {EVENTS_DIR}/)")


def import_movielens(path: Path | str, out: Path | str | None = None, *,
                     drop_unknown_items: bool = False) -> Path:
    """Convert a MovieLens folder into a Marquee dataset directory (atomically); returns it.
    `drop_unknown_items`: as in load_movielens (the manifest counts what was dropped)."""
    out = Path(out) if out is not None else default_out(path)
    _check_replaceable(out, Path(path))
    ml = load_movielens(path, drop_unknown_items=drop_unknown_items)
    titles = titles_table(ml.items)
    artwork = artwork_table(ml.items)
    members = members_table(ml.ratings, ml.users)
    seconds = ml.ratings.column("timestamp").cast(pa.int64())
    without_profile: list[int] = []
    if ml.users is not None:
        raters = pc.unique(ml.ratings.column("user_id"))
        without_profile = pc.filter(raters, pc.invert(pc.is_in(
            raters, value_set=ml.users.column("user_id")))).sort().to_pylist()
    manifest = {
        "source": "movielens",
        "layout": ml.layout,
        "path": str(ml.path.resolve()),
        "seed": None,  # nothing random: the import is a pure function of the files
        "titles": titles.num_rows,
        "artwork": artwork.num_rows,
        "members": members.num_rows,
        "plays": ml.ratings.num_rows,
        **ml.stats,
        "members_without_profile": len(without_profile),
        "members_without_profile_ids": without_profile[:20],
        "unknown_item_ids": ml.unknown_item_ids[:20],
        "tags": None if ml.tags is None else ml.tags.num_rows,
        "start": _iso(pc.min(seconds).as_py()),
        "end": _iso(pc.max(seconds).as_py()),
        "genres": sorted(set(pc.list_flatten(titles.column("genres")).to_pylist())),
    }
    return write_dataset(out, titles=titles, artwork=artwork, members=members,
                         events=iter_events(ml.ratings), manifest=manifest)


# ---------------------------------------------------------------------------------------------
# Interactions for offline evaluation
# ---------------------------------------------------------------------------------------------


def _is_dataset_dir(path: Path) -> bool:
    return all((path / name).exists() for name in (*DATASET_FILES, EVENTS_DIR))


def interactions(source: Path | str | Dataset | MovieLens) -> pa.Table:
    """(member_id, title_id, timestamp, value) of every play, in (timestamp, file line)
    order, from a raw MovieLens folder, an imported dataset directory, or either loaded.
    Both routes give the same table for the same MovieLens data."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        is_dataset = path.is_dir() and _is_dataset_dir(path)
        source = load_dataset(path) if is_dataset else load_movielens(path)
    if isinstance(source, MovieLens):
        ratings = source.ratings
        return pa.table({
            "member_id": ratings.column("user_id"),
            "title_id": ratings.column("item_id"),
            "timestamp": ratings.column("timestamp").cast(TIMESTAMP),
            "value": ratings.column("rating"),
        }, schema=INTERACTIONS_SCHEMA)
    if isinstance(source, Dataset):
        events = source.events(
            columns=["member_id", "title_id", "timestamp", "value", "type", "seq"])
        plays = events.filter(pc.equal(events.column("type"), "play"))
        plays = plays.sort_by([("timestamp", "ascending"), ("seq", "ascending")])
        return pa.Table.from_arrays(
            [plays.column(name) for name in INTERACTIONS_SCHEMA.names], schema=INTERACTIONS_SCHEMA)
    raise TypeError(
        f"interactions: expected a path, Dataset or MovieLens, got {type(source).__name__}")


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path,
                        help="a MovieLens folder (100K: u.data + u.item; current: ratings.csv + "
                             "movies.csv; 1M: ratings.dat + movies.dat)")
    parser.add_argument("--out", type=Path, default=None,
                        help="dataset directory to write "
                             "(default: MARQUEE_HOME/movielens/<folder name>)")
    add_drop_unknown_items_flag(parser)


def add_drop_unknown_items_flag(parser: argparse.ArgumentParser) -> None:
    """The one definition of the flag, shared by `import-movielens` and `eval`."""
    parser.add_argument(DROP_UNKNOWN_ITEMS_FLAG, dest="drop_unknown_items", action="store_true",
                        help="drop ratings whose item is missing from the movie file (and count "
                             "them) instead of refusing the dataset")


def dropped_unknown_items_note(dropped: int, ids: list[int]) -> str:
    """The stderr line saying what --drop-unknown-items dropped."""
    shown = ", ".join(map(str, ids[:UNKNOWN_ITEM_IDS_SHOWN]))
    more = ", ..." if len(ids) > UNKNOWN_ITEM_IDS_SHOWN else ""
    return f"dropped {dropped} rating(s) of item id(s) missing from the movie file: {shown}{more}"


def cli_main(args: argparse.Namespace) -> int:
    try:
        out = import_movielens(args.path, args.out, drop_unknown_items=args.drop_unknown_items)
    except (MovieLensError, DatasetError) as exc:
        print(f"marquee import-movielens: {exc}", file=sys.stderr)
        return 2
    manifest = load_dataset(out).manifest
    dropped = manifest["dropped_ratings_unknown_item"]
    if dropped:
        note = dropped_unknown_items_note(dropped, manifest["unknown_item_ids"])
        print(f"marquee import-movielens: {note}", file=sys.stderr)
    print(f"imported {manifest['plays']:,} plays by {manifest['members']:,} members on "
          f"{manifest['titles']:,} titles ({manifest['layout']} layout, "
          f"{manifest['duplicates_dropped']} duplicate(s) dropped) into {out}")
    return 0
