"""What machine a figure was measured on: CPU model and ISA features, cores, caches,
threads and library versions. Every report carries these facts beside its numbers.
"""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path

import psutil
import torch

# The ISA features that decide which kernel path can run, by their /proc/cpuinfo names.
ISA_FEATURES = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",  # x86-64
    "asimd", "asimddp", "sve", "i8mm",  # ARM
)
_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> set[str]:
    info = _cpuinfo()
    return set((info.get("flags") or info.get("Features") or "").split())


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("Hardware") or platform.processor() or "unknown"


def cache_sizes() -> dict[str, str]:
    """Cache sizes of cpu0 keyed like `L1d`, `L2`, `L3`."""
    sizes = {}
    for index in sorted(_CACHE_DIR.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        sizes[f"L{level}{suffix}"] = size
    return sizes


def cpu_facts() -> dict:
    flags = cpu_flags()
    features = [f for f in ISA_FEATURES if f in flags]
    model = cpu_model()
    return {
        "model": model,
        "architecture": platform.machine(),
        "isa_features": features,
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cpus": psutil.cpu_count(logical=True),
        "caches": cache_sizes(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        # Stable across reboots and processes: what a per-CPU tuning cache is keyed by.
        "signature": hashlib.sha256(f"{model}|{' '.join(features)}".encode()).hexdigest()[:16],
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("torch", "ray", "transformers", "datasets", "tokenizers"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def machine_facts() -> dict:
    return {
        "cpu": cpu_facts(),
        "torch_threads": torch.get_num_threads(),
        "hostname": platform.node(),
        "versions": versions(),
    }
