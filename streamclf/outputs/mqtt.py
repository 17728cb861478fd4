"""MQTT (paho-mqtt): each stream's current genre as a retained message, changes as events.

Topics under `topic_prefix` (default `streamclf`), payloads the JSON of the feed message
(`to_dict()`, the same object `streamclf subscribe --json` prints):

- `<prefix>/<stream>/state`, **retained**: the latest genre message, so a subscriber that comes
  late (a dashboard, Home Assistant) gets the current genre at once;
- `<prefix>/<stream>/change`: a change of the published genre, not retained (an event);
- `<prefix>/<stream>/status`: the periodic health message, not retained;
- `<prefix>/<stream>/track`: a track started or ended, not retained.
"""

from __future__ import annotations

import json
import os
import threading

from streamclf.config import OutputConfig
from streamclf.feed.schema import (
    ChangeMessage,
    GenreMessage,
    Message,
    StatusMessage,
    TrackMessage,
)
from streamclf.outputs.worker import CONNECT_TIMEOUT_S, import_library

KEEPALIVE_S = 30
SUBTOPICS = {GenreMessage: ("state", True), ChangeMessage: ("change", False),
             StatusMessage: ("status", False),
             TrackMessage: ("track", False)}  # kind → (subtopic, retained)


class MqttDeliveryError(ConnectionError):
    """The broker refused the connection or a message could not be handed to it."""


class MqttSink:
    """A paho client whose network loop runs in paho's own thread while connected."""

    def __init__(self, config: OutputConfig) -> None:
        self._mqtt = import_library(config, "paho.mqtt.client", "paho-mqtt")
        self._config = config
        self._client = None
        self._connack = threading.Event()
        self._refused = ""

    def connect(self) -> None:
        mqtt = self._mqtt
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"streamclf-{self._config.name}-{os.getpid()}")
        client.reconnect_delay_set(min_delay=1, max_delay=1)  # the worker does the real back-off
        client.on_connect = self._on_connect
        self._connack.clear()
        self._refused = ""
        self._client = client
        client.connect(self._config.host, self._config.target_port, keepalive=KEEPALIVE_S)
        client.loop_start()
        if not self._connack.wait(CONNECT_TIMEOUT_S):
            msg = f"no answer from the MQTT broker in {CONNECT_TIMEOUT_S:.0f} s"
            raise MqttDeliveryError(msg)
        if self._refused:
            msg = f"the MQTT broker refused the connection: {self._refused}"
            raise MqttDeliveryError(msg)

    def _on_connect(self, _client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
        self._connack.set()

    def send(self, message: Message) -> None:
        if type(message) not in SUBTOPICS:
            return
        subtopic, retain = SUBTOPICS[type(message)]
        topic = f"{self._config.topic_prefix}/{message.stream}/{subtopic}"
        payload = json.dumps(message.to_dict(), separators=(",", ":"))
        info = self._client.publish(topic, payload, qos=self._config.qos, retain=retain)
        if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
            raise MqttDeliveryError(self._mqtt.error_string(info.rc))
        if self._config.qos:
            info.wait_for_publish(CONNECT_TIMEOUT_S)
            if not info.is_published():
                msg = f"the broker did not acknowledge {topic} in {CONNECT_TIMEOUT_S:.0f} s"
                raise MqttDeliveryError(msg)

    def close(self) -> None:
        if self._client is None:
            return
        self._client.disconnect()
        self._client.loop_stop()
        self._client = None
