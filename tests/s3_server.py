"""A local S3-compatible server for the backup tests: moto's server mode, started as its own
process on a loopback port picked at runtime and stopped by the context manager."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.loopback import free_port, stop

# Generous for a loaded CI machine; moto answers in about a second.
START_TIMEOUT_S = 60.0
# moto accepts any credentials; boto3 needs some to sign its requests.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "janitor-test",
    "AWS_SECRET_ACCESS_KEY": "janitor-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def running_s3(workdir: Path) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1; yields its endpoint URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "moto.log"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(process, url, log)
        yield url
    finally:
        stop(process)


def _wait_until_up(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            # A loopback http:// URL this module made.
            with urllib.request.urlopen(url + "/moto-api/", timeout=5):  # noqa: S310
                return
        except (urllib.error.URLError, OSError):
            if process.poll() is not None or time.monotonic() > deadline:
                log_text = log.read_text(errors="replace")
                raise RuntimeError(f"moto did not start:\n{log_text}") from None
            time.sleep(0.05)
