"""Plugins, analysis jobs and their results (tables as rows of dicts, figures, summary)."""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, TextIO, Union

from ._proto.interpmesh.v1 import analysis_service_pb2 as apb
from .errors import for_code

if TYPE_CHECKING:  # pragma: no cover
    from .mesh import Mesh

__all__ = ["Plugin", "Job", "JobResult", "Table", "Figure", "ProgressBar"]


@dataclass(frozen=True)
class Plugin:
    """A plugin the gateway offers: id, version, description, its parameters' JSON Schema, what it
    produces, and whether it loaded (``error`` says why not)."""

    id: str
    version: str
    description: str
    parameter_schema: Dict[str, Any]
    produces: List[str]
    loaded: bool
    error: str

    @staticmethod
    def from_proto(p: Any) -> "Plugin":
        schema = json.loads(p.parameter_schema_json) if p.parameter_schema_json else {}
        return Plugin(p.id, p.version, p.description, schema, list(p.produces), bool(p.loaded), p.error)


class Table(List[Dict[str, Any]]):
    """A result table: a list of rows, each a dict column → value. ``columns`` keeps their order."""

    def __init__(self, name: str, columns: List[str], rows: List[Dict[str, Any]]) -> None:
        super().__init__(rows)
        self.name = name
        self.columns = columns

    def column(self, name: str) -> List[Any]:
        """One column's values, in row order."""
        return [row[name] for row in self]

    def to_pandas(self) -> Any:
        """The table as a pandas DataFrame (needs pandas)."""
        try:
            import pandas  # type: ignore[import-not-found, import-untyped, unused-ignore]
        except ImportError:
            raise ImportError("Table.to_pandas() needs pandas, which is not installed: `pip install pandas` "
                              "(or `apt-get install python3-pandas`); the rows are dicts in the table itself") from None
        return pandas.DataFrame(list(self), columns=self.columns)

    def __repr__(self) -> str:
        return f"Table({self.name!r}, {len(self)} rows, columns={self.columns})"


@dataclass(frozen=True)
class Figure:
    """A figure of a result: SVG or PNG bytes with a caption. ``save(path)`` writes it; notebooks display it."""

    name: str
    media_type: str
    content: bytes
    caption: str

    @property
    def extension(self) -> str:
        """``.svg`` or ``.png``."""
        return ".svg" if "svg" in self.media_type else ".png" if "png" in self.media_type else ".bin"

    def save(self, path: Union[str, "os.PathLike[str]"]) -> Path:
        """Writes the figure to ``path`` (a folder: ``<folder>/<name><extension>``); returns the file written."""
        p = Path(path)
        if p.is_dir():
            p = p / (self.name.replace("/", "_") + self.extension)
        p.write_bytes(self.content)
        return p

    def show(self) -> None:
        """Displays the figure in a notebook (IPython); elsewhere saves it to a temporary file and prints its path."""
        try:
            from IPython.display import SVG, Image, display  # type: ignore[import-not-found, import-untyped, unused-ignore]
        except ImportError:
            import tempfile

            with tempfile.NamedTemporaryFile(prefix="interpmesh-figure-", suffix=self.extension, delete=False) as f:
                f.write(self.content)
            print(f"{self.name}: {f.name}")
            return
        display(SVG(self.content) if "svg" in self.media_type else Image(self.content))

    def _repr_svg_(self) -> Optional[str]:
        return self.content.decode("utf-8") if "svg" in self.media_type else None

    def _repr_png_(self) -> Optional[bytes]:
        return self.content if "png" in self.media_type else None


@dataclass
class JobResult:
    """A succeeded job's result: ``summary`` (dict), ``tables`` (name → :class:`Table`),
    ``figures`` (name → :class:`Figure`) and the names of the ``artifacts`` it saved."""

    summary: Dict[str, Any]
    tables: Dict[str, Table]
    figures: Dict[str, Figure]
    artifacts: List[str]

    @staticmethod
    def from_proto(r: Any) -> "JobResult":
        tables = {}
        for t in r.tables:
            columns = list(t.columns)
            rows = json.loads(t.rows_json) if t.rows_json else []
            tables[t.name] = Table(t.name, columns, [dict(zip(columns, row)) for row in rows])
        figures = {f.name: Figure(f.name, f.media_type, bytes(f.content), f.caption) for f in r.figures}
        return JobResult(json.loads(r.summary_json) if r.summary_json else {}, tables, figures, list(r.artifacts))


_STATES = {v: k[len("JOB_STATE_"):] for k, v in apb.JobState.items()}


def _time(ts: Any) -> Optional[_dt.datetime]:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return _dt.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=_dt.timezone.utc)


class Job:
    """An analysis job: its record as last seen (``state``, ``progress``, ``message``, ``error``,
    ``result``) and the calls that follow it (:meth:`watch`, :meth:`refresh`, :meth:`cancel`)."""

    def __init__(self, mesh: "Mesh", record: Any) -> None:
        self._mesh = mesh
        self._record = record

    @property
    def record(self) -> Any:
        """The Job message as last received."""
        return self._record

    @property
    def id(self) -> str:
        return str(self._record.id)

    @property
    def plugin(self) -> str:
        return str(self._record.plugin)

    @property
    def model(self) -> str:
        return str(self._record.model)

    @property
    def state(self) -> str:
        """QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED or INTERRUPTED."""
        return _STATES.get(self._record.state, "UNSPECIFIED")

    @property
    def done(self) -> bool:
        """True once the job has finished, whatever the outcome."""
        return self.state in ("SUCCEEDED", "FAILED", "CANCELLED", "INTERRUPTED")

    @property
    def progress(self) -> float:
        return float(self._record.progress)

    @property
    def message(self) -> str:
        return str(self._record.message)

    @property
    def error(self) -> str:
        """Why it did not succeed ('' otherwise)."""
        return str(self._record.error)

    @property
    def error_code(self) -> str:
        """The gRPC status name of the failure (INVALID_ARGUMENT, DEADLINE_EXCEEDED, ...), '' otherwise."""
        return str(self._record.error_code)

    @property
    def parameters(self) -> Dict[str, Any]:
        return json.loads(self._record.parameters_json) if self._record.parameters_json else {}

    @property
    def created(self) -> Optional[_dt.datetime]:
        return _time(self._record.created)

    @property
    def finished(self) -> Optional[_dt.datetime]:
        return _time(self._record.finished)

    @property
    def result(self) -> Optional[JobResult]:
        """The result once the job has SUCCEEDED (None before, or when it did not succeed)."""
        if not self._record.HasField("result"):
            return None
        return JobResult.from_proto(self._record.result)

    def refresh(self) -> "Job":
        """Fetches the job's current record (GetJob); returns self."""
        self._record = self._mesh._unary(self._mesh._analysis.GetJob, apb.GetJobRequest(id=self.id))
        return self

    def watch(self, progress: Union[bool, TextIO] = True, raise_on_failure: bool = True) -> "Job":
        """Follows the job to its end (WatchJob), showing progress; returns self with the final record.

        Raises the exception named after the job's error status (with its error and ``.job``) when it
        did not succeed, unless ``raise_on_failure`` is False.
        """
        events = self._mesh._stream(self._mesh._analysis.WatchJob, apb.WatchJobRequest(id=self.id))
        self._follow(events, progress)
        if raise_on_failure:
            self.raise_for_state()
        return self

    wait = watch

    def cancel(self) -> "Job":
        """Asks the job to stop; returns self with the record the gateway answered."""
        self._record = self._mesh._unary(self._mesh._analysis.CancelJob, apb.CancelJobRequest(id=self.id))
        return self

    def raise_for_state(self) -> None:
        """Raises when the job finished without succeeding (the class named after its error status)."""
        if self.done and self.state != "SUCCEEDED":
            code = self.error_code or ("CANCELLED" if self.state == "CANCELLED" else "UNKNOWN")
            raise for_code(code)(f"job {self.id} ({self.plugin}) {self.state.lower()}: {self.error or self.message}", code=code, job=self)

    def _follow(self, events: Iterator[Any], progress: Union[bool, TextIO]) -> None:
        bar = ProgressBar(self.plugin or "job", progress)
        try:
            for e in events:
                if e.HasField("progress"):
                    p = e.progress
                    bar.update(float(p.fraction), p.message)
                elif e.HasField("finished"):
                    self._record = e.finished
        finally:
            bar.close(self.state if self.done else "")
        if not self.done:
            self.refresh()

    def __repr__(self) -> str:
        return f"Job({self.id!r}, plugin={self.plugin!r}, state={self.state})"


class ProgressBar:
    """A progress display on stderr: a bar redrawn in place on a terminal or in a Jupyter notebook,
    plain lines otherwise (logs, CI) — one per 10% step or new message."""

    def __init__(self, label: str, enabled: Union[bool, TextIO] = True) -> None:
        self.label = label
        self.stream: Optional[TextIO] = (sys.stderr if enabled is True else enabled) if enabled else None  # type: ignore[assignment]
        # Jupyter's stderr is no terminal but redraws a line on '\r': a notebook gets the bar too.
        notebook = enabled is True and "ipykernel" in sys.modules
        self.tty = notebook or bool(self.stream is not None and hasattr(self.stream, "isatty") and self.stream.isatty())
        self._last: Optional[tuple] = None
        self._drawn = False

    def update(self, fraction: float, message: str = "") -> None:
        if self.stream is None:
            return
        fraction = min(max(fraction, 0.0), 1.0)
        if self.tty:
            width = 30
            filled = int(round(fraction * width))
            line = f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}% {message[:60]}"
            self.stream.write(line.ljust(110)[:130])
            self._drawn = True
        else:
            key = (int(fraction * 10), message)
            if key == self._last:
                return
            self._last = key
            self.stream.write(f"{self.label}: {fraction * 100:.0f}% {message}\n")
        self.stream.flush()

    def close(self, state: str = "") -> None:
        if self.stream is None:
            return
        if self.tty and self._drawn:
            self.stream.write("\n")
        if state:
            self.stream.write(f"{self.label}: {state.lower()}\n")
        self.stream.flush()
