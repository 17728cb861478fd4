"""Outputs: feed consumers that speak the protocols of a station's chain (docs/outputs.md).

Each configured `[[outputs]]` table becomes one `OutputWorker` (its own thread and bounded queue)
around one sink module (`mqtt`, `osc`, `liquidsoap`, `rds`). The pipeline offers every feed
message to `Outputs.offer`, which never waits; the client libraries are imported only for the
kinds configured, so the daemon needs them only when it uses them.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence

from streamclf.config import OutputConfig
from streamclf.feed.schema import Message
from streamclf.outputs.worker import OutputWorker, Sink

SINK_CLASSES = {
    "mqtt": ("streamclf.outputs.mqtt", "MqttSink"),
    "osc": ("streamclf.outputs.osc", "OscSink"),
    "liquidsoap": ("streamclf.outputs.liquidsoap", "LiquidsoapSink"),
    "rds": ("streamclf.outputs.rds", "RdsSink"),
}


def make_sink(config: OutputConfig) -> Sink:
    """The sink for one output's kind; ConfigError when its client library is missing."""
    module, name = SINK_CLASSES[config.kind]
    return getattr(importlib.import_module(module), name)(config)


class Outputs:
    """All configured outputs: started together, offered every message, stopped together."""

    def __init__(self, configs: Sequence[OutputConfig]) -> None:
        self.workers = [OutputWorker(config, make_sink(config)) for config in configs]

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def offer(self, message: Message) -> None:
        """Hand a stamped feed message to every output; never blocks."""
        for worker in self.workers:
            worker.offer(message)

    def health(self) -> list[list[str | int]]:
        """[[name, state, sent, failures, dropped], …] for status messages."""
        return [worker.health() for worker in self.workers]

    def close(self, timeout_s: float) -> None:
        """Stop every worker (each drains briefly, then closes its sink) within `timeout_s`."""
        for worker in self.workers:
            worker.stop()
        deadline = time.monotonic() + timeout_s
        for worker in self.workers:
            if worker.is_alive():
                worker.join(max(0.0, deadline - time.monotonic()))
