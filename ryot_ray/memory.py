"""Peak memory of one piece of work, measured in a fresh process.

RSS peaks are per process, so each measurement spawns its own. The work's setup
(building a model from random fp32 weights, say) may peak far above the work itself:
the child resets the peak once setup is done (Linux `clear_refs`) and hands the heap
it freed back to the system first, so the figure covers the work alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import multiprocessing
import os
import queue as queue_module
import resource
from collections.abc import Callable
from pathlib import Path

TRANSPARENT_HUGE_PAGES = Path("/sys/kernel/mm/transparent_hugepage/enabled")
MMAP_THRESHOLD_BYTES = 4 * 2**20


def training_allocator_env(huge_pages: Path = TRANSPARENT_HUGE_PAGES) -> dict[str, str]:
    """Environment for a training process where the kernel gives transparent huge pages:
    every allocation of 4 MiB or more gets a mapping of its own, returned to the system
    when freed (glibc otherwise keeps freed tensors of up to 32 MiB in its heap, where they
    raise the peak), and torch asks for huge pages there, so mapping it again costs little.
    Paired runs (commit 3fe6808) found the peak lower at `base` and the time unchanged at
    `base` and `small` with 4 MiB; a 1 MiB threshold cost time at `small`, and without huge
    pages any threshold cost time, so nothing is set there. `bench compression` prints the
    settings its processes ran with."""
    try:
        modes = huge_pages.read_text()
    except OSError:
        return {}
    if "[always]" not in modes and "[madvise]" not in modes:
        return {}
    return {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES), "THP_MEM_ALLOC_ENABLE": "1"}


def start_measuring() -> bool:
    """Free what setup left behind and reset the peak; False where the peak cannot be reset."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """This process's peak RSS since start or the last reset."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(work: Callable, args: tuple, queue) -> None:
    queue.put(work(*args))


def in_fresh_process(work: Callable, *args, what: str = "memory measurement", env: dict[str, str] | None = None):
    """`work(*args)` in a spawned process (with `env` added to its environment); its return
    value. `work` calls `start_measuring()` after its setup and returns `peak_rss_mb()`
    with its figures."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_child, args=(work, args, queue))
    saved = {name: os.environ.get(name) for name in env or {}}
    os.environ.update(env or {})
    try:
        child.start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not child.is_alive():
                raise RuntimeError(f"the {what} process died (exit code {child.exitcode}; out of memory?)") from None
    child.join()
    return result
