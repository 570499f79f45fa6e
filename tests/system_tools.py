"""System programs some stream tests drive: Debian's mosquitto (MQTT broker) and chromium.

Where one is missing, its tests skip on a developer's machine but fail in CI (the CI
variable set by the caller), so that a CI image without them cannot pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CI_REQUESTED

MOSQUITTO = "/usr/sbin/mosquitto"
CHROMIUM = "/usr/bin/chromium"


def require_program(path: str, package: str) -> str:
    found = path if os.access(path, os.X_OK) else shutil.which(Path(path).name)
    if found:
        return found
    message = (
        f"{path} is missing: install Debian's {package} package (apt-get install -y {package})"
    )
    if CI_REQUESTED:
        pytest.fail(f"{message}; CI is set, so this test may not be skipped")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mosquitto:
    """A private broker on a free local port; messages and sessions persist across restarts."""

    def __init__(self, folder: Path) -> None:
        self.binary = require_program(MOSQUITTO, "mosquitto")
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nautosave_interval 1\n"
        )
        self.log = folder / "mosquitto.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"mosquitto did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # saves its persistence file on the way out
            self.process.wait(timeout=10)
        self.process = None
