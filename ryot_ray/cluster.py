"""Join the Ray cluster a run should use, or start an embedded local one.

With no address (and no RAY_ADDRESS), `ray.init()` starts a local cluster; inside
`ray job submit`, plain `ray.init()` joins the job's cluster. The dashboard stays on
127.0.0.1 unless the user asks for another host; token authentication is left as Ray
sets it. The driver's job carries the experiment's name (`job_name`, the dashboard's Jobs
page shows and filters by it; a `ray job submit` caller's own metadata wins, as in Ray).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.job_config import JobConfig

from ryot_ray.config import ConfigError

REACH_TIMEOUT_S = 5  # ray.init itself retries an unreachable address for minutes


def embedded(address: str | None) -> bool:
    """True when this run starts its own local cluster (no --address, no RAY_ADDRESS)."""
    return not address and not os.environ.get("RAY_ADDRESS")


def check_reachable(address: str) -> None:
    """One clear line for an address nothing answers at, instead of minutes of retries."""
    if address in ("auto", "local") or "://" in address:
        return  # Ray resolves these itself, and fails fast
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or address, int(port or 6379)), timeout=REACH_TIMEOUT_S).close()
    except (OSError, ValueError) as error:
        raise ConfigError(f"--address {address}: no Ray cluster answers there ({error})") from None


@dataclass(frozen=True)
class Connection:
    dashboard: str | None  # the dashboard's URL, if the cluster runs one
    session_dir: Path  # the cluster session's directory (on the head node)


def connect(address: str | None = None, dashboard_host: str = "127.0.0.1",
            job_name: str | None = None) -> Connection | None:
    """Initialise Ray once per process (None if it already was)."""
    if ray.is_initialized():
        return None
    if address:
        check_reachable(address)
    kwargs = {"address": address} if address else {"dashboard_host": dashboard_host}
    job_config = JobConfig(metadata={"job_name": job_name} if job_name else {})
    try:
        context = ray.init(**kwargs, job_config=job_config, logging_level="WARNING", log_to_driver=True)
    except ConnectionError as error:
        raise ConfigError(f"--address {address}: {error}") from None
    url = context.dashboard_url
    return Connection(f"http://{url}" if url and not url.startswith("http") else url,
                      Path(context.address_info["session_dir"]))


def dashboard_lines(url: str) -> str:
    """The dashboard's URL and how to get past its token prompt."""
    return (f"Ray dashboard: {url}\n"
            "  it asks for the cluster's token: `ray get-auth-token` prints it (keep it on this machine)")


def cluster_resources() -> dict:
    return {
        "nodes": len([n for n in ray.nodes() if n["Alive"]]),
        "total": ray.cluster_resources(),
        "available": ray.available_resources(),
    }


def largest_node_cpus() -> int:
    """The CPUs of the biggest live node: an actor asking for them has a node to itself."""
    return int(max(node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]))
