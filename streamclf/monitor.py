"""What `streamclf listen` shows: the feed's messages as a live view, plain lines or JSON lines.

The pipeline hands every message it publishes to one sink; all three sinks share the same
two-method shape (`handle(msg)`, `close()`), and `make_view` picks one once from the output:
a rich live view on a terminal, one greppable line per message on a pipe, JSON on request.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from typing import IO, Protocol

from rich.bar import Bar
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from streamclf.feed.schema import ChangeMessage, GenreMessage, Message, StatusMessage
from streamclf.feed.subscriber import format_message

REFRESH_HZ = 4.0
LEVEL_FLOOR_DBFS = -60.0
BAR_WIDTH_CHARS = 24
TOP_TAGS_SHOWN = 5


class View(Protocol):
    """A sink for feed messages; `close()` restores the terminal and flushes."""

    def handle(self, msg: Message) -> None: ...

    def close(self) -> None: ...


def clock(*, wall: float) -> str:
    """Local wall-clock time of a message, to the second."""
    return time.strftime("%H:%M:%S", time.localtime(wall))


def make_view(stdout: IO[str], as_json: bool) -> View:
    """JSON lines when asked, the live view on a terminal, plain lines otherwise."""
    if as_json:
        return JsonLines(stdout)
    if stdout.isatty():
        return LiveView(Console(file=stdout))
    return PlainLines(stdout)


# -- lines ---------------------------------------------------------------------------------

def json_line(msg: Message) -> str:
    """The message as `streamclf subscribe --json` prints it: strict JSON, with its topic."""
    return json.dumps(msg.to_dict(), allow_nan=False)


class PlainLines:
    """One line per message, in `streamclf subscribe`'s format, flushed at once so that
    `streamclf listen | grep rock` follows live."""

    _format = staticmethod(format_message)

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def handle(self, msg: Message) -> None:
        self._out.write(self._format(msg) + "\n")
        self._out.flush()

    def close(self) -> None:
        self._out.flush()


class JsonLines(PlainLines):
    """One JSON object per message and line (`jq`-friendly: no NaN)."""

    _format = staticmethod(json_line)


# -- the live view -------------------------------------------------------------------------

@dataclasses.dataclass
class _StreamState:
    """The newest message of each kind for one stream: all the view needs to draw it."""

    genre: GenreMessage | None = None
    change: ChangeMessage | None = None
    status: StatusMessage | None = None


def level_fraction(*, level_dbfs: float) -> float:
    """dBFS mapped onto a meter: LEVEL_FLOOR_DBFS (or below) -> 0, 0 dBFS -> 1."""
    if not math.isfinite(level_dbfs):
        return 0.0
    return min(max(1.0 - level_dbfs / LEVEL_FLOOR_DBFS, 0.0), 1.0)


def _bar(fraction: float, color: str) -> Bar:
    return Bar(size=1.0, begin=0.0, end=fraction, width=BAR_WIDTH_CHARS, color=color)


def _genre_rows(msg: GenreMessage) -> list[RenderableType]:
    maybe = ", ".join(f"{tag}?" for tag, _ in msg.candidates or ())
    headline = Text.assemble(
        (msg.genre or "-", "bold green"),
        f" {msg.confidence:.2f}",
        (f" ({maybe})" if maybe else "", "green"),
        (f"   raw {msg.raw_genre or '-'}", "dim"),
        f"   t={msg.t1:.1f} s   latency {msg.latency_ms:.0f} ms",
    )
    meter = Table.grid(padding=(0, 1))
    meter.add_row(
        Text("level", style="dim"),
        _bar(level_fraction(level_dbfs=msg.level_dbfs), "yellow"),
        Text(f"{msg.level_dbfs:6.1f} dBFS" + ("  silence" if msg.silence else "")),
    )
    if msg.silence:  # the tags of a silent window say nothing about the music: none shown
        meter.add_row(Text("no tags during silence", style="dim"))
    else:
        for tag, p in msg.top[:TOP_TAGS_SHOWN]:
            meter.add_row(Text(tag), _bar(float(p), "cyan"), Text(f"{p:.2f}"))
    return [headline, meter]


def milliseconds(value_ms: float) -> str:
    """A timing figure, or "–" until there is one (NaN before the engine's first batch)."""
    return f"{value_ms:.1f} ms" if math.isfinite(value_ms) else "– ms"


def _status_row(msg: StatusMessage) -> Text:
    return Text(
        f"windows {msg.windows}  xruns {msg.xruns}  overruns {msg.ring_overruns}  "
        f"dropped {msg.dropped_windows}  feed drops {msg.feed_drops}  "
        f"engine p50 {milliseconds(msg.engine_p50_ms)}  p99 {milliseconds(msg.engine_p99_ms)}",
        style="dim",
    )


def _loudness_rows(msg: StatusMessage) -> list[RenderableType]:
    """EBU R128 figures (when the daemon measures them) and the alarms that are on, in red."""
    rows: list[RenderableType] = []
    if msg.momentary_lufs is not None:
        rows.append(Text(
            f"loudness M {msg.momentary_lufs:.1f}  S {msg.short_term_lufs:.1f}  "
            f"I {msg.integrated_lufs:.1f} LUFS  LRA {msg.loudness_range_lu:.1f} LU  "
            f"true peak {msg.true_peak_dbtp:.1f} dBTP"))
    if msg.alarms:
        rows.append(Text("ALARM " + ", ".join(msg.alarms), style="bold red"))
    return rows


def render_stream(name: str, state: _StreamState) -> Panel:
    """One stream's panel: smoothed genre, level meter, top tags, last change, counters."""
    rows: list[RenderableType] = []
    if state.genre is None:
        rows.append(Text("waiting for the first window…", style="dim"))
    else:
        rows.extend(_genre_rows(state.genre))
    if state.change is not None:
        rows.append(Text(
            f"changed {state.change.previous or '-'} -> {state.change.genre or '-'} "
            f"at {clock(wall=state.change.wall)}",
            style="dim",
        ))
    subtitle = None
    device = "starting"
    ended = state.status is not None and state.status.final
    if state.status is not None:
        rows.extend(_loudness_rows(state.status))
        rows.append(_status_row(state.status))
        device = "stopped" if ended else state.status.device_state
        subtitle = f"{state.status.model} on {state.status.engine}"
    # a stopped stream's last frame stays on the terminal: dimmed, so it does not read as live
    return Panel(Group(*rows), title=f"[bold]{name}[/] · {device}", title_align="left",
                 subtitle=subtitle, subtitle_align="right", border_style="dim" if ended else "")


class LiveView:
    """Stacked per-stream panels, redrawn by rich at REFRESH_HZ from the newest messages.

    `handle` only stores the message (under a lock: rich redraws from its own thread), so a
    burst of windows costs nothing and the screen never flickers between partial updates.
    """

    def __init__(self, console: Console, refresh_hz: float = REFRESH_HZ) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, _StreamState] = {}
        self._live = Live(console=console, refresh_per_second=refresh_hz,
                          get_renderable=self.render)
        self._live.start()

    def handle(self, msg: Message) -> None:
        with self._lock:
            state = self._streams.setdefault(msg.stream, _StreamState())
            setattr(state, msg.KIND, msg)

    def render(self) -> RenderableType:
        with self._lock:
            if not self._streams:
                return Text("waiting for audio…", style="dim")
            return Group(*(render_stream(name, state) for name, state in self._streams.items()))

    def close(self) -> None:
        """Draw the final frame and hand the terminal back."""
        self._live.stop()
