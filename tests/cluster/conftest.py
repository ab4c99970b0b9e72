"""A real two-node Ray cluster on this machine: `ray start --head` and `ray start
--address`, one CPU each, a resource label and a temp dir per node, token
authentication on with a token of the cluster's own. Teardown stops only this
cluster's processes (found by their temp dirs, with every process they started),
never another Ray on the machine. `dashboard` is that cluster's dashboard in headless
Chromium (Debian's, driven by Playwright), past its token prompt."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

RAY = str(Path(sys.executable).with_name("ray"))
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# without the background-networking flags Chromium keeps calling out of this closed network
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
SCREENSHOTS = REPO / "results" / "dashboard"  # linked from the README's dashboard section


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes_of(temp_dir: str) -> list[psutil.Process]:
    """A node's Ray processes (their command lines name its temp dir) and all they started."""
    found = {}
    for process in psutil.process_iter(["cmdline"]):
        if process.pid != os.getpid() and temp_dir in " ".join(process.info["cmdline"] or []):
            found[process.pid] = process
            try:
                found.update({child.pid: child for child in process.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
    return list(found.values())


def stop(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=20)


@dataclass
class Cluster:
    address: str  # the GCS, for ray start and ray.init
    dashboard: str  # the dashboard and job server
    metrics: list[str]  # every node's metrics export endpoint
    env: dict  # what a client of this cluster needs (token included)
    temp_dirs: dict[str, str] = field(default_factory=dict)  # node label -> temp dir

    def start_node(self, label: str) -> None:
        temp_dir = tempfile.mkdtemp(prefix=f"ryot-{label}-", dir="/tmp")  # short: socket paths live under it
        self.temp_dirs[label] = temp_dir
        metrics = free_port()
        self.metrics.append(f"http://127.0.0.1:{metrics}/metrics")
        command = [RAY, "start", f"--address={self.address}", f"--temp-dir={temp_dir}",
                   f'--resources={{"{label}": 1}}', f"--metrics-export-port={metrics}", "--num-cpus=1",
                   "--disable-usage-stats"]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    def stop_node(self, label: str) -> None:
        stop(processes_of(self.temp_dirs[label]))

    def submit(self, *args: str, wait: bool = True, timeout: int = 900,
               job_name: str | None = None) -> subprocess.CompletedProcess:
        """`ray job submit` of `python -m ryot_ray ARGS` with the repository as working dir,
        named `job_name` on the dashboard's Jobs page."""
        named = ["--metadata-json", json.dumps({"job_name": job_name})] if job_name else []
        command = [RAY, "job", "submit", "--address", self.dashboard, "--working-dir", str(REPO), *named,
                   *([] if wait else ["--no-wait"]), "--", sys.executable, "-m", "ryot_ray", *args]
        deadline = time.monotonic() + 60
        while True:
            done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
            # a new cluster's job server answers before its node's agent has registered; no job was made
            if "No available agent" not in done.stdout + done.stderr or time.monotonic() > deadline:
                return done
            time.sleep(2)

    def get(self, path: str, token: bool = True) -> tuple[int, str]:
        request = urllib.request.Request(self.dashboard + path)
        if token:
            request.add_header("x-ray-authorization", f"Bearer {self.env['RAY_AUTH_TOKEN']}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:  # not listening yet
            return 0, ""

    def node_ids(self) -> dict[str, str]:
        """Node label -> node id of the live nodes, from the dashboard's node list."""
        status, body = self.get("/nodes?view=summary")
        if status != 200:
            return {}
        by_temp_dir = {node["raylet"]["tempDir"]: node["raylet"]["nodeId"]
                       for node in json.loads(body)["data"]["summary"] if node["raylet"]["state"] == "ALIVE"}
        return {label: by_temp_dir[path] for label, path in self.temp_dirs.items() if path in by_temp_dir}


@pytest.fixture(scope="module")
def cluster():
    """A head ("node_head") and a second node ("node_second"), one CPU each."""
    temp_dir = tempfile.mkdtemp(prefix="ryot-head-", dir="/tmp")
    port, dashboard, metrics = free_port(), free_port(), free_port()
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    cluster = Cluster(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", [f"http://127.0.0.1:{metrics}/metrics"],
                      env, {"node_head": temp_dir})
    try:
        head = subprocess.run([RAY, "start", "--head", f"--port={port}", f"--temp-dir={temp_dir}",
                               '--resources={"node_head": 1}', "--dashboard-host=127.0.0.1",
                               f"--dashboard-port={dashboard}", f"--metrics-export-port={metrics}",
                               "--num-cpus=1", "--disable-usage-stats"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
        cluster.start_node("node_second")
        deadline = time.monotonic() + 60
        while len(cluster.node_ids()) < 2:
            assert time.monotonic() < deadline, "the second node did not join"
            time.sleep(1)
        yield cluster
    finally:
        for directory in cluster.temp_dirs.values():
            stop(processes_of(directory))
            shutil.rmtree(directory, ignore_errors=True)


def chromium() -> Path:
    """Debian's Chromium, installed here when missing; skipped only where it cannot be
    (never in CI)."""
    if not CHROMIUM.exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
            subprocess.run(command, env=env, capture_output=True, timeout=900)
    if not CHROMIUM.exists():
        reason = f"no {CHROMIUM}, and it cannot be installed here (apt-get install chromium, as root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
def dashboard(cluster):
    """A page of the cluster's dashboard in headless Chromium, the token entered in its prompt."""
    from playwright.sync_api import expect, sync_playwright

    executable = chromium()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(cluster.dashboard + "/#/jobs")
            prompt = page.get_by_role("dialog")
            prompt.get_by_label("Authentication Token").fill(cluster.env["RAY_AUTH_TOKEN"])
            prompt.get_by_role("button", name="Submit").click()
            expect(prompt).to_have_count(0)
            yield page
        finally:
            browser.close()
