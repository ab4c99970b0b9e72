"""Join the Ray cluster a run should use, or start an embedded local one.

With no address (and no RAY_ADDRESS), `ray.init()` starts a local cluster; inside
`ray job submit`, plain `ray.init()` joins the job's cluster. The dashboard stays on
127.0.0.1 unless the user asks for another host; token authentication is left as Ray
sets it.
"""

from __future__ import annotations

import ray


def connect(address: str | None = None, dashboard_host: str = "127.0.0.1") -> str | None:
    """Initialise Ray once per process; return the dashboard URL if there is one."""
    if ray.is_initialized():
        return None
    kwargs = {"address": address} if address else {"dashboard_host": dashboard_host}
    context = ray.init(**kwargs, logging_level="WARNING", log_to_driver=True)
    url = context.dashboard_url
    return f"http://{url}" if url and not url.startswith("http") else url


def cluster_resources() -> dict:
    return {
        "nodes": len([n for n in ray.nodes() if n["Alive"]]),
        "total": ray.cluster_resources(),
        "available": ray.available_resources(),
    }


def largest_node_cpus() -> int:
    """The CPUs of the biggest live node: an actor asking for them has a node to itself."""
    return int(max(node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]))
