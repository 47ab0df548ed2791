"""The papers' numbers, each with its source and mark, and tables that set them beside the book's.

All numbers live in one data file, ``ddpm_core/data/paper_numbers.json``; nothing here types a
number by hand. Marks (from the project's REFERENCES.md):

  ``P`` read in the paper's text; ``C`` read in the reference code; ``S`` agreeing secondary
  transcriptions (check against the PDF before printing as the paper's); ``U`` unconfirmed.

Numbers keep the digits the paper printed: ``str(value("ho2020_table1", "NLL", model="DDPM, L_simple"))``
is ``"3.75"``, not ``"3.7500"``.

Typical use in a chapter::

    from ddpm_core import paper
    paper.table("ho2020_table1")                      # list of dicts, one per row
    paper.value("ho2020_table1", "FID", model="DDPM, L_simple")      # 3.17
    paper.cite("ho2020_table1", model="DDPM, L_simple")              # 'Ho et al. 2020, Table 1, arXiv:2006.11239 [P]'
    paper.compare([{"quantity": "FID", "paper": paper.ref("ho2020_table1", "FID", model="DDPM, L_simple"),
                    "book": fid}], profile="cpu", dataset="mnist5k", extractor="offline classifier",
                  n_samples=1000)                     # a table object: renders as HTML in the book
"""
from __future__ import annotations

import html
import json
import re
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable, NamedTuple

MARKS = ("P", "C", "S", "U")
# what each mark tells a reader, for the tables' captions (the data file's "marks" say it to its editors)
MARK_LEGEND = {
    "P": "read in the paper",
    "C": "read in the paper's reference code",
    "S": "from agreeing transcriptions of the paper, not yet checked against its PDF",
    "U": "often cited beside the paper's table, not confirmed in it",
}

__all__ = [
    "MARKS", "MARK_LEGEND", "PaperValue", "Table", "tables", "info", "table", "row", "value", "ref", "cite",
    "setting", "format_cell", "mark_legend", "render_table", "compare", "notation", "html_table", "frame_table",
]


class _Num(float):
    """A float that remembers the digits it was written with in the data file."""

    def __new__(cls, text: str):
        obj = super().__new__(cls, text)
        obj._text = text
        return obj

    def __str__(self) -> str:
        return self._text

    __repr__ = __str__


@lru_cache(maxsize=1)
def _data() -> dict:
    text = resources.files("ddpm_core").joinpath("data/paper_numbers.json").read_text(encoding="utf-8")
    return json.loads(text, parse_float=_Num)


def tables() -> list[str]:
    """Names of all tables in the data file, e.g. ``"ho2020_table1"``."""
    return list(_data()["tables"])


def _table_raw(name: str) -> dict:
    all_tables = _data()["tables"]
    if name not in all_tables:
        raise KeyError(f"no paper table named {name!r}; known tables: {', '.join(all_tables)}")
    return all_tables[name]


def _source_text(paper_key: str, where: str) -> str:
    p = _data()["papers"][paper_key]
    parts = [p["cite"], where]
    if p.get("arxiv"):
        parts.append(f"arXiv:{p['arxiv']}")
    return ", ".join(part for part in parts if part)


def info(name: str) -> dict:
    """Metadata of a table: title, paper (a dict with cite/title/authors/arxiv/bibkey), where,
    mark, dataset, columns, notes and ``source`` (one citable line)."""
    t = _table_raw(name)
    return {
        "name": name,
        "title": t["title"],
        "paper": dict(_data()["papers"][t["paper"]]),
        "where": t["where"],
        "mark": t["mark"],
        "dataset": t.get("dataset", ""),
        "columns": list(t["columns"]),
        "notes": t.get("notes", ""),
        "source": _source_text(t["paper"], t["where"]),
    }


def table(name: str, **where: Any) -> list[dict]:
    """Rows of a paper table as dicts, optionally filtered by column values.

    Every row has every column of the table (``None`` where the paper gives no number) and two
    extra keys: ``mark`` (one of ``MARKS``; a row may override its table's mark) and ``source``
    (paper, table and arXiv id as one string). ``source_note`` is present where the data file
    qualifies the source.
    """
    t = _table_raw(name)
    unknown = set(where) - set(t["columns"])
    if unknown:
        raise KeyError(f"table {name!r} has no column(s) {sorted(unknown)}; columns: {t['columns']}")
    source = _source_text(t["paper"], t["where"])
    rows = []
    for raw in t["rows"]:
        r = {c: raw.get(c) for c in t["columns"]}
        if any(r[k] != v for k, v in where.items()):
            continue
        r["mark"] = raw.get("mark", t["mark"])
        r["source"] = source
        if "source_note" in raw:
            r["source_note"] = raw["source_note"]
        rows.append(r)
    return rows


def row(name: str, **where: Any) -> dict:
    """The one row of ``name`` whose columns equal ``where``; an error if none or several match."""
    rows = table(name, **where)
    if len(rows) != 1:
        keys = [{k: v for k, v in r.items() if k not in ("mark", "source", "source_note")} for r in table(name)]
        raise LookupError(
            f"{len(rows)} rows of {name!r} match {where}; give column values that pick exactly one of: {keys}"
        )
    return rows[0]


def value(name: str, column: str, **where: Any) -> Any:
    """One number (or string) from a paper table, e.g. ``value("ho2020_table1", "FID", model="DDPM, L_simple")``."""
    r = row(name, **where)
    if column not in r:
        raise KeyError(f"table {name!r} has no column {column!r}; columns: {info(name)['columns']}")
    return r[column]


def setting(name: str, key: str) -> Any:
    """A value from a settings table (``ho2020_settings``, ``nichol2021_settings``, ``nichol2021_method``)."""
    return value(name, "value", setting=key)


class PaperValue(NamedTuple):
    """A paper's number with where it came from; ``str()`` gives the number as printed."""

    value: Any
    mark: str
    source: str
    dataset: str

    def __str__(self) -> str:
        return _fmt(self.value)


def ref(name: str, column: str, **where: Any) -> PaperValue:
    """A paper number bundled with its mark, source and dataset, for :func:`compare`."""
    r = row(name, **where)
    return PaperValue(r[column], r["mark"], r["source"], info(name)["dataset"])


def cite(name: str, **where: Any) -> str:
    """One line to cite a table, or a row of it: ``'Ho et al. 2020, Table 1, arXiv:2006.11239 [P]'``."""
    mark = row(name, **where)["mark"] if where else info(name)["mark"]
    return f"{info(name)['source']} [{mark}]"


# ----------------------------------------------------------------------------- formatting

def _fmt(v: Any, digits: int | None = None) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) and not isinstance(v, _Num):
        if digits is not None:
            return f"{v:.{digits}f}"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


def format_cell(r: dict, column: str) -> str:
    """A cell as the paper prints it: ``"9.46 ± 0.11"`` where a ``<column>_std`` exists,
    ``"≤ 3.75 (3.72)"`` for a bound on the NLL with the train value in brackets."""
    v = r.get(column)
    if v is None:
        return ""
    text = _fmt(v)
    std = r.get(f"{column}_std")
    if std is not None:
        text += f" ± {_fmt(std)}"
    if r.get(f"{column}_is_bound"):
        text = "≤ " + text
    train = r.get(f"{column}_train")
    if train is not None:
        text += f" ({_fmt(train)})"
    return text


class Table(str):
    """A rendered table: a Markdown string that displays as HTML in Jupyter and in the book."""

    def __new__(cls, markdown: str, html_text: str):
        obj = super().__new__(cls, markdown)
        obj.html = html_text
        return obj

    def _repr_html_(self) -> str:
        return self.html

    def _repr_markdown_(self) -> str:
        return str(self)


# The data file and the package's table texts write the papers' symbols in ASCII (they are keys
# that code looks rows up by); tables show them as the papers print them.
_NOTATION = [
    (re.compile(r"\bmu~"), "\u03bc\u0303"),                   # mu~   -> μ̃ (mu with a combining tilde)
    (re.compile(r"\bbeta~_t\b"), "\u03b2\u0303\u209c"),       # beta~_t -> β̃ₜ
    (re.compile(r"\bbeta_t\b"), "\u03b2\u209c"),               # beta_t -> βₜ
    (re.compile(r"\bSigma\b"), "\u03a3"),                      # Sigma -> Σ
    (re.compile(r"(?<![-\w])eps(?![-\w])"), "\u03b5"),          # eps -> ε, not in run names (eps-simple)
    (re.compile(r" -> "), " \u2192 "),                           # an arrow between two values
]
_LOSS = re.compile(r"\bL_(simple|vlb|hybrid|T|t|0)\b")


def notation(text: str) -> str:
    """``text`` with the papers' symbols written in ASCII (``mu~``, ``Sigma``, ``beta~_t``, ``eps``,
    `` -> ``) as Unicode (μ̃, Σ, β̃ₜ, ε, →); run names such as ``eps-simple`` stay as they are."""
    for pattern, symbol in _NOTATION:
        text = pattern.sub(symbol, text)
    return text


def _html_text(text: Any) -> str:
    """A table cell as HTML: escaped, :func:`notation`, and loss names with their subscript
    (``L_simple`` -> L<sub>simple</sub>)."""
    return _LOSS.sub(r"L<sub>\1</sub>", html.escape(notation(str(text))))


def html_table(header: list[str], body: list[list[Any]], caption: str = "") -> Table:
    """A table as Markdown that displays as HTML (a :class:`Table`), the papers' symbols in
    :func:`notation`; ``caption`` goes under it. Every table of the package is drawn by this."""
    md = ["| " + " | ".join(notation(str(c)) for c in header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(notation(str(c)).replace("|", "\\|") for c in cells) + " |" for cells in body]
    if caption:
        md += ["", notation(caption)]
    h = ['<table class="ddpm-table">']
    if caption:
        h.append(f"<caption>{_html_text(caption)}</caption>")
    h.append("<thead><tr>" + "".join(f"<th>{_html_text(c)}</th>" for c in header) + "</tr></thead>")
    h.append("<tbody>")
    h += ["<tr>" + "".join(f"<td>{_html_text(c)}</td>" for c in cells) + "</tr>" for cells in body]
    h.append("</tbody></table>")
    return Table("\n".join(md), "\n".join(h))


def frame_table(frame, caption: str = "") -> Table:
    """A ``pandas.DataFrame`` (or ``Series``) as the book's tables are drawn (:func:`html_table`): its
    index as the first columns, headed by the index's names on the one header row (pandas' own
    display adds a second header row for them), a leading index level that repeats the row above
    left blank, numbers with thousands separators ("1,207.7"), and ``caption`` under it.
    """
    import pandas as pd

    if isinstance(frame, pd.Series):
        frame = frame.to_frame(frame.name if frame.name is not None else "value")
    names = [n if n is not None else "" for n in frame.index.names]
    header = names + [str(c) for c in frame.columns]

    def text(v) -> str:
        if hasattr(v, "item") and not isinstance(v, str):  # a numpy scalar
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return str(v)
        return format(v, ",")

    body, above = [], None
    for key, values in zip(frame.index, frame.itertuples(index=False)):
        key = key if isinstance(key, tuple) else (key,)
        shown = [("" if above is not None and i == 0 and k == above[0] and len(key) > 1 else text(k))
                 for i, k in enumerate(key)]
        body.append(shown + [text(v) for v in values])
        above = key
    return html_table(header, body, caption=caption)


def mark_legend(marks: Iterable[str]) -> str:
    """The caption sentence that says what the given marks mean, in MARKS order (``""`` for none)."""
    marks = set(marks)
    used = [m for m in MARKS if m in marks]
    return ("Marks: " + "; ".join(f"{m}, {MARK_LEGEND[m]}" for m in used) + ".") if used else ""


def render_table(name: str, columns: Iterable[str] | None = None, sort_by: str | None = None,
                 **where: Any) -> Table:
    """A paper table as Markdown/HTML with a mark column and the source as its caption, followed by
    what the marks in the table mean (:func:`mark_legend`).

    ``columns`` defaults to the table's columns without the helper ones (``*_std``, ``*_train``,
    ``*_is_bound``), which are folded into their main column by :func:`format_cell`. ``sort_by``
    orders the rows by that column, ascending (the data file keeps the order it was transcribed
    in). When every row shown has the same mark, the mark column is left out and the caption says
    that the mark holds for every row.
    """
    meta = info(name)
    if columns is None:
        columns = [c for c in meta["columns"] if not c.endswith(("_std", "_train", "_is_bound"))]
    columns = list(columns)
    rows = table(name, **where)
    if sort_by is not None:
        if sort_by not in meta["columns"]:
            raise ValueError(f"cannot sort {name!r} by {sort_by!r}: its columns are {meta['columns']}")
        rows = sorted(rows, key=lambda r: r[sort_by])
    marks = [r["mark"] for r in rows]
    legend = mark_legend(marks)
    shared = len(set(marks)) == 1  # one mark for all: say it once, in the caption, not in a column
    if shared:
        legend = legend.replace("Marks: ", "Marks (every row): ", 1)
    body = [[format_cell(r, c) for c in columns] + ([] if shared else [r["mark"]]) for r in rows]
    header = columns + ([] if shared else ["mark"])
    caption = f"{meta['title']} Source: {meta['source']}. {legend}"
    return html_table(header, body, caption=caption.rstrip())


def drop_shared_columns(header: list[str], body: list[list[str]], columns: Iterable[str],
                        min_rows: int = 1) -> tuple[list[str], list[list[str]], dict[str, str]]:
    """Leave out each of ``columns`` whose cell is the same in every row (with at least ``min_rows``
    rows), for a caption to state once: a table narrow enough for the book's page.

    :return: (header, body) without those columns, and ``{column: its shared value}`` in header order.
    """
    columns = set(columns)
    shared = {h: body[0][j] for j, h in enumerate(header)
              if h in columns and len(body) >= max(min_rows, 1) and len({cells[j] for cells in body}) == 1}
    keep = [j for j, h in enumerate(header) if h not in shared]
    return [header[j] for j in keep], [[cells[j] for j in keep] for cells in body], shared


_BOOK_FIELDS = ("profile", "dataset", "extractor", "n_samples")


def compare(
    rows: list[dict],
    *,
    profile: str | None = None,
    dataset: str | None = None,
    extractor: str | None = None,
    n_samples: int | None = None,
    digits: int = 2,
    caption: str = "",
) -> Table:
    """A table that puts the paper's number beside the book's, with how the book measured it.

    :param rows: one dict per quantity with keys ``quantity`` (str), ``paper`` (a
        :class:`PaperValue` from :func:`ref`, a plain value, or ``None``), ``book`` (the measured
        number, or ``None``) and optionally any of ``profile``, ``dataset``, ``extractor``,
        ``n_samples`` to override the keyword defaults for that row.
    :param profile, dataset, extractor, n_samples: how the book's numbers were measured (the
        runtime profile, the dataset, the feature extractor, the number of samples).
    :param digits: decimals for the book's floats.
    :param caption: text under the table.
    :return: a :class:`Table` with columns quantity, paper, paper source, this book, profile,
        dataset, feature extractor, samples. With several rows, the paper-source column and each
        column of the book's setting whose value every row shares are left out and stated once
        after the caption (a table of eight columns is wider than the book's page).
    """
    defaults = dict(profile=profile, dataset=dataset, extractor=extractor, n_samples=n_samples)
    header = ["quantity", "paper", "paper source", "this book", "profile", "dataset",
              "feature extractor", "samples"]
    body = []
    for i, r in enumerate(rows):
        if "quantity" not in r:
            raise KeyError(f"row {i} of compare() has no 'quantity' key; got keys {sorted(r)}")
        setting_ = {k: r.get(k, defaults[k]) for k in _BOOK_FIELDS}
        missing = [k for k, v in setting_.items() if v is None and r.get("book") is not None]
        if missing:
            raise ValueError(
                f"row {r['quantity']!r} has a book number but no {missing}; pass them to compare() "
                "or in the row, so every number says how it was measured"
            )
        p = r.get("paper")
        if isinstance(p, PaperValue):
            paper_text, source = f"{p} [{p.mark}]", f"{p.source} ({p.dataset})" if p.dataset else p.source
        else:
            paper_text, source = _fmt(p), r.get("paper_source", "")
        n = setting_["n_samples"]
        body.append([
            str(r["quantity"]), paper_text, source, _fmt(r.get("book"), digits),
            _fmt(setting_["profile"]), _fmt(setting_["dataset"]), _fmt(setting_["extractor"]),
            f"{n:,}" if isinstance(n, int) else _fmt(n),
        ])
    header, body, shared = drop_shared_columns(header, body, [header[2]] + header[4:], min_rows=2)
    source = shared.pop("paper source", "")
    said = ", ".join(f"{h} {v}" for h, v in shared.items() if v)  # an empty column just goes
    legend = mark_legend(r["paper"].mark for r in rows if isinstance(r.get("paper"), PaperValue))
    for extra in [f"Every paper number from {source}." if source else "",
                  f"All the book's numbers: {said}." if said else "", legend]:
        if extra:
            caption = (caption.rstrip() + " " if caption.strip() else "") + extra
    return html_table(header, body, caption=caption)
