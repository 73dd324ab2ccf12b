"""Text fields made safe for the format they are written in: a backend name, a note or an error
comes from plugins and from the files of a run folder, and must stay text wherever it lands.

- CSV: a text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a
  formula to a spreadsheet; it is prefixed with a single quote, as OWASP advises
  (:func:`csv_cell`), and :func:`csv_value` undoes it on reading, so values round-trip. Numbers
  are left alone (``-0.5`` is a number, not a formula, also as text), and so is a lone ``-``.
- Markdown table cells: ``\\``, ``|``, backticks, ``*``, ``_`` (where it could open or close
  emphasis), ``[``, ``]``, ``<``, ``>``, ``~``, ``$`` (GitHub's math) and ``&`` (an entity
  such as ``&lt;``) escaped with a backslash; line breaks become spaces
  (:func:`markdown_cell`).
- LaTeX: ``\\ & % $ # _ { } ~ ^`` escaped; line breaks become spaces (:func:`latex_text`).
- Link targets: percent-encoded (:func:`link_target`).
"""

from __future__ import annotations

import csv
import re
from typing import Any
from urllib.parse import quote

#: The first characters that make a spreadsheet read a cell as a formula (OWASP).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_MARKDOWN_SPECIAL = set("\\`*[]<>|~$&")
_LATEX = {"\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          **{c: "\\" + c for c in "&%$#_{}"}}
_BREAKS = re.compile(r"\r\n|\r|\n")


def _formula_like(text: str) -> bool:
    """``text``, after any leading single quotes, starts as a formula (and is neither a plain
    number such as ``-0.5`` nor the lone ``-`` of a missing value, which a spreadsheet reads as
    a number or as text): such a text is written with one more quote, so that reading strips
    exactly the one added."""
    text = text.lstrip("'")
    if not text.startswith(FORMULA_STARTS) or text == "-":
        return False
    try:
        float(text)
    except ValueError:
        return True
    return text != text.strip()  # " -1" is a number to Python, a tab-led text to a spreadsheet


def csv_cell(value: Any) -> Any:
    """A CSV cell's value: text that a spreadsheet would take for a formula gets a leading
    single quote; anything else (numbers included) is returned as it is."""
    if isinstance(value, str) and _formula_like(value):
        return "'" + value
    return value


def csv_value(value: Any) -> Any:
    """The inverse of :func:`csv_cell` on a value read back from our own CSV."""
    if isinstance(value, str) and value.startswith("'") and _formula_like(value[1:]):
        return value[1:]
    return value


def csv_text(frame: Any) -> str:
    """``frame`` (a pandas DataFrame) as CSV text with every text cell and column name passed
    through :func:`csv_cell`: no cell is a formula in a spreadsheet."""
    safe = frame.copy()
    carriage_return = False
    for column in safe.columns:
        if safe[column].dtype.kind not in "biufcmM":  # text (object or pandas' str): not numbers
            safe[column] = safe[column].map(csv_cell)
            carriage_return |= bool(safe[column].map(lambda v: "\r" in str(v)).any())
    safe.columns = [csv_cell(str(c)) for c in safe.columns]
    # a lone carriage return in a cell is read back as the end of the line unless the cell is
    # quoted, and the CSV writers quote it only when they quote every text
    quoting = csv.QUOTE_NONNUMERIC if carriage_return else csv.QUOTE_MINIMAL
    return str(safe.to_csv(index=False, quoting=quoting))


def _underscore(text: str) -> str:
    """``_`` escaped where it could open or close emphasis: not in a run of underscores between
    two letters or digits (``gradient_method``), which CommonMark never reads as emphasis."""
    def repl(match: re.Match[str]) -> str:
        start, end = match.span()
        inner = (start > 0 and text[start - 1].isalnum()
                 and end < len(text) and text[end].isalnum())
        return match.group() if inner else "\\_" * len(match.group())

    return re.sub(r"_+", repl, text)


def markdown_cell(value: Any) -> str:
    """``value`` as the text of a markdown table cell: every character markdown would read as
    markup (or as the end of the cell) escaped, line breaks as spaces."""
    text = _BREAKS.sub(" ", str(value))
    text = "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in text)
    return _underscore(text)


def latex_text(value: Any) -> str:
    """``value`` as LaTeX text: its special characters escaped, line breaks as spaces."""
    return "".join(_LATEX.get(c, c) for c in _BREAKS.sub(" ", str(value)))


def link_target(*parts: str) -> str:
    """A relative link target from path parts, each percent-encoded (a ``)``, a space or a
    ``#`` in a folder's name cannot end or redirect the link)."""
    return "/".join(quote(part, safe="") for part in parts)
