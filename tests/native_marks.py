"""Marks for tests of the native code.

They skip where a user's machine could not build the libraries; in CI (CI=true) they run
anyway, so a failed build fails them instead of turning them into skips. A test of one
ISA path skips only where this CPU lacks that ISA.
"""

import pytest

from ryot_ray.infer.native import engine_library
from ryot_ray.kernels.native import kernels, must_build, native_isas

NATIVE_MISSING = kernels()[0] is None or engine_library()[0] is None
needs_native = pytest.mark.skipif(NATIVE_MISSING and not must_build(),
                                  reason="the native libraries were not built (no C compiler?)")


def available(isa: str) -> None:
    """Skip unless this CPU runs `isa`; fail where the libraries are missing (in CI, where
    `needs_native` does not skip)."""
    if NATIVE_MISSING:
        pytest.fail("the native libraries were not built")
    if isa not in native_isas():
        pytest.skip(f"{isa} not available on this CPU")
