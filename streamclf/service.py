"""`serve` and `listen`: logging, sd_notify, signals, reload and the watchdog around one Pipeline.

The main thread only handles signals, sd_notify, the watchdog and the live view; the work happens
in the pipeline's threads. SIGTERM/SIGINT stop cleanly (final status message) within 2 s, exit 0
and 130; SIGHUP applies the reloadable part of the config file without touching the feed socket
(`config.split_reload`), and the watchdog is pinged only while
the daemon as a whole can work (the engine worker makes progress and not every stream is stuck),
so systemd restarts a stalled pipeline.
"""

from __future__ import annotations

import queue
import signal
import sys
import time
from pathlib import Path

import structlog

from streamclf.audio.files import BUNDLED_CLIP
from streamclf.config import (
    Config,
    config_with_overrides,
    default_config,
    load_config,
    parse_stream_spec,
    split_reload,
)
from streamclf.errors import EXIT_INTERRUPTED, StreamclfError
from streamclf.logs import configure_logging
from streamclf.pipeline import Pipeline
from streamclf.sdnotify import Notifier

log = structlog.get_logger(__name__)

MAIN_LOOP_S = 0.05  # how often the main thread looks at signals, the view and the watchdog
STOP_TIMEOUT_S = 1.5  # leaves room for the final status inside the promised 2 s


class ShutdownRequested(BaseException):
    """Raised by the signal handler while start-up is still loading the engine.

    A BaseException (like KeyboardInterrupt), so that code which turns any Exception into its
    own error (the model loader does) cannot mistake a SIGTERM for a broken model."""


def config_for_listen(args) -> Config:
    """The config file (or defaults) with the command line's source and options applied."""
    base = load_config(args.config) if args.config else default_config()
    stream = None
    common = {"channel": args.channel}
    if args.device is not None:
        stream = parse_stream_spec("device", args.device, **common)
    elif args.file is not None or args.demo:
        path = BUNDLED_CLIP if args.demo else args.file
        stream = parse_stream_spec("file", path, loop=args.loop or args.demo,
                                   realtime=not args.fast, **common)
    elif args.url is not None:
        stream = parse_stream_spec("url", args.url, **common)
    elif args.stdin:
        stream = parse_stream_spec("stdin", stdin_format=args.stdin_format,
                                   stdin_rate=args.stdin_rate, stdin_channels=args.stdin_channels,
                                   **common)
    return config_with_overrides(base, streams=[stream] if stream else None,
                                 engine_kind=args.engine, model=args.model, hop_s=args.hop,
                                 cpu_precision=args.cpu_precision,
                                 endpoint=args.endpoint)


class Runner:
    """Runs one pipeline in the foreground until a signal, the end of all inputs, or a duration."""

    def __init__(self, config: Config, *, config_path: Path | None, publish: bool, view=None,
                 duration_s: float | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.view = view
        self.duration_s = duration_s
        self.pipeline = Pipeline(config, publish=publish, view=view is not None)
        self.notifier = Notifier()
        self._starting = True
        self._stop_signal: int | None = None
        self._reload = False

    def _on_stop(self, signum, _frame) -> None:
        self._stop_signal = signum
        if self._starting:
            raise ShutdownRequested

    def _on_reload(self, _signum, _frame) -> None:
        self._reload = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_reload)
        try:
            with self.notifier.extended_start():
                self.pipeline.start(on_progress=lambda text: self.notifier.status(text))
            self._starting = False
        except BaseException:
            self.notifier.stopping()
            self.pipeline.stop(STOP_TIMEOUT_S)
            # the handler's ShutdownRequested may surface as whatever the interrupted code made
            # of it (an ImportError inside an import, a ModelError from the model loader)
            if self._stop_signal is None:
                raise
            log.info("stopped_during_startup", signal=self._stop_signal)
            return self._exit_code()
        self.notifier.ready(status="running")
        try:
            self._loop()
        finally:
            self.notifier.stopping()
            self.pipeline.stop(STOP_TIMEOUT_S)
            self._drain_view()
            if self.view is not None:
                self.view.close()
        return self._exit_code()

    def _exit_code(self) -> int:
        """130 after Ctrl-C (SIGINT), 0 after SIGTERM or a normal end: the rule of every command."""
        return EXIT_INTERRUPTED if self._stop_signal == signal.SIGINT else 0

    def _loop(self) -> None:
        ping_period = self.notifier.watchdog_ping_period_s if self.config.service.watchdog else None
        deadline = None if self.duration_s is None else time.monotonic() + self.duration_s
        next_ping = time.monotonic()
        was_stalled: str | None = None
        while self._stop_signal is None:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                log.info("duration_reached")
                break
            if self.pipeline.all_finished.is_set():
                log.info("all_inputs_ended")
                break
            if self._reload:
                self._reload = False
                self._reload_config()
            if ping_period is not None and now >= next_ping:
                stalled = self.pipeline.stalled_part(now)
                if stalled is None:
                    self.notifier.watchdog()
                if stalled != was_stalled:  # log the transitions, not every ping period
                    if stalled is None:
                        log.info("pipeline_recovered", was=was_stalled)
                    else:
                        log.error("pipeline_stalled", stalled=stalled)
                    was_stalled = stalled
                self.notifier.status(self.pipeline.status_line())
                next_ping = now + ping_period
            self._drain_view(wait_s=MAIN_LOOP_S)
        if self._stop_signal is not None:
            log.info("stopping", signal=signal.Signals(self._stop_signal).name)

    def _drain_view(self, wait_s: float = 0.0) -> None:
        messages = self.pipeline.view_messages
        if messages is None or self.view is None:
            time.sleep(wait_s)
            return
        deadline = time.monotonic() + wait_s
        while True:
            try:
                msg = messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            self.view.handle(msg)

    def _reload_config(self) -> None:
        if self.config_path is None:
            log.warning("reload_ignored", reason="no config file was given")
            return
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except StreamclfError as exc:
            log.error("reload_failed", error=str(exc), keeping="the running config")
        else:
            running, applied, needs_restart = split_reload(self.config, new)
            self.pipeline.reload(running)
            self.config = running
            log.info("config_reloaded", applied=applied, needs_restart=needs_restart)
            if needs_restart:
                log.warning("reload_needs_restart", keys=needs_restart,
                            detail="these changes take effect at the next start")
        self.notifier.ready(status="reloaded")


def run(args) -> int:
    """Entry point of `streamclf serve` and `streamclf listen`."""
    if args.command == "serve":
        config = load_config(args.config)
        configure_logging(config.service.log_level, config.service.log_format)
        return Runner(config, config_path=args.config, publish=True,
                      duration_s=args.duration).run()
    from streamclf.monitor import make_view

    config = config_for_listen(args)
    view = make_view(sys.stdout, args.json)
    interactive = sys.stdout.isatty() and not args.json
    # The live view owns the terminal: only problems are logged beside it.
    configure_logging("warning" if interactive else config.service.log_level,
                      config.service.log_format)
    return Runner(config, config_path=args.config, publish=not args.no_publish, view=view,
                  duration_s=args.duration).run()
