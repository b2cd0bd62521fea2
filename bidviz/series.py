"""Scalar series out of a run's event files, as CSV or JSON: one exporter for `bidviz export` and the plugin's
`GET data` alike.

The event-file reader (`bidviz.writers.read_scalars`) is imported only when a series is read, so importing this
module costs nothing; it reads whatever wrote the run (tensorboardX, torch, TF2 `tf.summary`, our EventWriter).
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from bidviz import protocol
from bidviz.errors import BIDVizError

__all__ = ["Points", "SeriesError", "latest_session", "point_dicts", "read_series", "to_csv"]

#: one series: (step, wall_time, value) per point
Points = Sequence[tuple[int, float, float]]


class SeriesError(BIDVizError):
    """The event files of a run cannot be read; the message names the run and the reason."""

    default_type = "SeriesError"
    default_http_status = 500


def read_series(path: str | os.PathLike[str]) -> tuple[Mapping[str, Points], list[str]]:
    """Every scalar series of a run directory (or one event file), and the reader's warnings (a record cut short
    by a live or killed writer: what came before it is kept). SeriesError when the files cannot be read."""
    try:
        from bidviz.writers import read_scalars
    except ImportError as e:
        raise SeriesError(f"cannot read event files: {e}") from None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            series: Mapping[str, Points] = read_scalars(path)
    except (OSError, ValueError) as e:
        raise SeriesError(f"cannot read the event files of {path}: {e}") from None
    return series, [str(w.message) for w in caught]


def latest_session(points: Points) -> tuple[Points, int]:
    """The points a series' latest session wrote, and how many earlier ones it leaves out. Points come in the order
    they were written; a step lower than the one before is a loop that restarted its step count (a run resumed
    from step 0), whose new points would otherwise mix with the old ones at the same steps."""
    start = 0
    for i in range(1, len(points)):
        if points[i][0] < points[i - 1][0]:
            start = i
    return points[start:], start


def point_dicts(points: Points) -> list[dict[str, Any]]:
    """A series as JSON can hold it: [{"step", "wall_time", "value"}], non-finite values as "NaN"/"Infinity"."""
    return [
        {"step": step, "wall_time": wall_time, "value": protocol.to_json_value(float(value))}
        for step, wall_time, value in points
    ]


def to_csv(series: Mapping[str, Points], tags: Sequence[str], *, tag_column: bool = True) -> str:
    """CSV of the `tags` of `series`: `tag,step,wall_time,value`, or `step,wall_time,value` without the tag column
    (for one series). Floats are written in full (repr), so a value reads back exactly."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["tag", "step", "wall_time", "value"] if tag_column else ["step", "wall_time", "value"])
    for tag in tags:
        lead = [tag] if tag_column else []
        for step, wall_time, value in series[tag]:
            writer.writerow([*lead, step, repr(float(wall_time)), repr(float(value))])
    return out.getvalue()
