"""A real two-node Ray cluster on this machine: `ray start --head` and `ray start
--address`, one CPU each and a resource label per node. Teardown stops only this
cluster's processes (found by its own temp dir), never another Ray on the machine."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes_of(temp_dir: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if temp_dir in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


@pytest.fixture(scope="module")
def two_nodes():
    """(GCS address, dashboard URL, env) of a head and a second node, one CPU each."""
    temp_dir = tempfile.mkdtemp(prefix="ryot-", dir="/tmp")  # short: Ray's socket paths live under it
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}
    common = ["--num-cpus=1", "--disable-usage-stats"]
    try:
        head = subprocess.run([RAY, "start", "--head", f"--port={port}", f"--temp-dir={temp_dir}",
                               '--resources={"node_head": 1}', "--dashboard-host=127.0.0.1",
                               f"--dashboard-port={dashboard}", *common],
                              env=env, capture_output=True, text=True, timeout=120)
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
        second = subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", '--resources={"node_second": 1}',
                                 *common], env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", env
    finally:
        for process in processes_of(temp_dir):
            process.terminate()
        _, alive = psutil.wait_procs(processes_of(temp_dir), timeout=20)
        for process in alive:
            process.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)
