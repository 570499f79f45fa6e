"""Events to the plant's MQTT broker (paho-mqtt, the ``mqtt`` extra).

* Each event is published as JSON to ``<prefix>/events/<camera>`` with QoS 1, in order,
  through a :class:`~anomaly_edge.stream.spool.Spool`: publishing never blocks the cameras,
  and events wait on disk while the broker is away.
* ``<prefix>/status`` holds a retained ``online``/``offline``; the broker itself publishes
  ``offline`` (the last will) when the box disappears without saying goodbye.

URL: ``mqtt://[user[:password]@]host[:port][/prefix]`` (``mqtts://`` for TLS with the system's
certificates; default port 1883 / 8883; default prefix ``anomaly-edge``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from anomaly_edge.stream.outputs import OutputHealth
from anomaly_edge.stream.spool import Spool

if TYPE_CHECKING:
    from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    from anomaly_edge.stream.result import FrameResult

log = logging.getLogger("anomaly_edge.stream")

DEFAULT_PREFIX = "anomaly-edge"


class MqttPublisher:
    """An event consumer (see :class:`~anomaly_edge.stream.events.EventLog`) that publishes
    each event to MQTT.

    Args:
        url: the broker (see the module docstring).
        spool_dir: where events wait while the broker is away (default: temporary).
        client_id: MQTT client id (default: ``anomaly-edge-<host>-<pid>``).
        ack_timeout: seconds to wait for one PUBACK before counting the attempt as failed
            (the message stays with paho, which sends it again after reconnecting).
    """

    def __init__(
        self,
        url: str,
        *,
        spool_dir: str | os.PathLike[str] | None = None,
        client_id: str | None = None,
        keepalive: int = 15,
        ack_timeout: float = 10.0,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise ValueError(
                f"--mqtt {url!r}: give mqtt://host[:port][/prefix] (or mqtts:// for TLS)"
            )
        tls = parts.scheme in ("mqtts", "ssl")
        self.host = parts.hostname
        try:
            self.port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ValueError(f"--mqtt {url!r}: the port is not a number") from None
        self.prefix = parts.path.strip("/") or DEFAULT_PREFIX
        self.status_topic = f"{self.prefix}/status"
        self.ack_timeout = ack_timeout
        self.connected = threading.Event()
        self._acked = threading.Condition()
        self._acked_ids: set[int] = set()  # acknowledged message ids not yet waited for
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"anomaly-edge-{socket.gethostname()}-{os.getpid()}",
            protocol=mqtt.MQTTv311,
        )
        if parts.username:
            self._client.username_pw_set(
                unquote(parts.username), unquote(parts.password) if parts.password else None
            )
        if tls:
            self._client.tls_set()
        self._client.will_set(self.status_topic, "offline", qos=1, retain=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=8)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.connect_async(self.host, self.port, keepalive=keepalive)
        self._was_connected = False
        self._closing = False
        self._waiting: tuple[str, int] | None = None  # (payload, message id) awaiting PUBACK
        self._spool = Spool("mqtt", self._publish, spool_dir=spool_dir)
        self._client.loop_start()  # paho's network thread reconnects by itself

    # ---- EventLog consumer -----------------------------------------------------------------

    def event(self, record: dict[str, Any], result: FrameResult | None) -> None:
        self._spool.put(record)

    def close(self, timeout: float = 5.0) -> None:
        self._spool.close(timeout)
        self._closing = True
        if self.connected.is_set():  # a clean goodbye; the will covers the other case
            info = self._client.publish(self.status_topic, "offline", qos=1, retain=True)
            self._wait_for_ack(info.mid, 2.0)
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def pending(self) -> int:
        return self._spool.pending

    @property
    def health(self) -> OutputHealth:
        """What was lost (refused, dropped, undelivered at the end): the run's summary."""
        return self._spool.health

    def report(self) -> str:
        left = self._spool.pending
        return (
            f"mqtt: {self._spool.delivered} event(s) delivered to {self.host}:{self.port}"
            f"/{self.prefix}" + (f", {left} undelivered" if left else "")
        )

    # ---- delivery (the spool's worker thread) ----------------------------------------------

    def _publish(self, record: dict[str, Any]) -> None:
        payload = json.dumps(record)
        if self._waiting is not None and self._waiting[0] == payload:
            # Published before, not acknowledged yet: paho still holds it and sends it again
            # after reconnecting, so wait for that copy rather than publishing a second one.
            mid = self._waiting[1]
        else:
            if not self.connected.wait(self.ack_timeout):
                raise ConnectionError(f"not connected to {self.host}:{self.port}")
            topic = f"{self.prefix}/events/{record.get('source', 'unknown')}"
            mid = self._client.publish(topic, payload, qos=1).mid
            self._waiting = (payload, mid)
        if not self._wait_for_ack(mid, self.ack_timeout):
            raise TimeoutError("no acknowledgement from the broker yet")
        self._waiting = None

    def _wait_for_ack(self, mid: int, timeout: float) -> bool:
        # By message id from on_publish: paho's MQTTMessageInfo keeps the error of the first
        # attempt (not connected) even after its own resend succeeded.
        deadline = time.monotonic() + timeout
        with self._acked:
            while mid not in self._acked_ids:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._acked.wait(left)
            self._acked_ids.discard(mid)
        return True

    # ---- paho callbacks (its network thread) -----------------------------------------------

    def _on_connect(
        self,
        client: Client,
        userdata: Any,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning("mqtt: %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        client.publish(self.status_topic, "online", qos=1, retain=True)
        self.connected.set()
        log.info(
            "mqtt: %s to %s:%d",
            "reconnected" if self._was_connected else "connected",
            self.host,
            self.port,
        )
        self._was_connected = True

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self.connected.is_set() and not self._closing:
            log.warning(
                "mqtt: lost the broker %s:%d (%s); events wait in the spool",
                self.host,
                self.port,
                reason_code,
            )
        self.connected.clear()

    def _on_publish(
        self,
        client: Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        with self._acked:
            self._acked_ids.add(mid)
            self._acked.notify_all()
