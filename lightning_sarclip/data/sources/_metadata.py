"""Range checks for numbers that readers take from metadata files into records (and so into captions).

One rule for every reader: a number that only *describes* the image (a ship's length, an incidence angle) is
checked against its physical range; a bad one (``-230`` m, ``inf`` degrees, text where a number belongs) is
dropped from the record and counted in ``skipped`` as ``"<field> out of range"``, because one broken AIS field
should not cost the chip, but must never reach a caption ("length -230 m"). A number the reader *needs* (a chip
centre, an image size) raises :class:`~lightning_sarclip.data.sources.base.SourceFormatError` naming the file,
field and range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_sarclip.data.sources.base import SourceFormatError

#: ``skip(reason, file)``: a source's counter of known, non-fatal problems (``SARSource.skip``).
SkipFn = Callable[[str, Any], None]


@dataclass(frozen=True)
class NumberRange:
    """Finite numbers between ``low`` and ``high`` (``None``: unbounded); ``low_open`` excludes ``low`` itself."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"a finite number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"a finite number {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"a finite number <= {self.high:g}"
        return "a finite number"


FINITE = NumberRange()
#: Lengths, widths, heights, resolutions: strictly positive.
POSITIVE = NumberRange(0.0, low_open=True)
#: Incidence, look, depression and elevation angles of a SAR acquisition.
ANGLE_0_90 = NumberRange(0.0, 90.0)
#: Azimuth / aspect angles.
ANGLE_0_360 = NumberRange(0.0, 360.0)


def parse_number(value: Any) -> float | None:
    """``value`` as a float (``"1.5e2"``, ``12``, ``"inf"`` -> ``inf``); ``None`` when empty or not a number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def checked_number(
    value: Any,
    field: str,
    valid: NumberRange,
    *,
    file: str | Path,
    skip: SkipFn,
    missing: Collection[float] = (),
) -> float | None:
    """A describing number: ``value`` as a float when it lies in ``valid``; ``None`` when absent (empty, or one of
    the ``missing`` codes such as AIS's 0 for "not available"); otherwise ``None`` and counted as
    ``"<field> out of range"`` (text that is not a number included)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = parse_number(value)
    if number is not None and number in missing:
        return None
    if number is None or number not in valid:
        skip(f"{field} out of range", f"{file}: {field} = {value!r}, expected {valid.describe()}")
        return None
    return number


def required_number(value: Any, field: str, valid: NumberRange, *, file: str | Path) -> float:
    """A number the reader needs: ``value`` as a float in ``valid``, else :class:`SourceFormatError`."""
    number = parse_number(value)
    if number is None or number not in valid:
        raise SourceFormatError(file, field, valid.describe(), value)
    return number
