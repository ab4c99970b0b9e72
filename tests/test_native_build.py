"""In CI the native libraries must have been built: a fallback there would hide a broken build."""

import pytest

from native_marks import NATIVE_MISSING
from ryot_ray.kernels.native import must_build


def test_native_libraries_are_built_where_they_must_be():
    if not must_build():
        pytest.skip("not CI: a machine without a C compiler runs the torch fallback")
    assert not NATIVE_MISSING, "CI=true but the native libraries did not build (see the install log)"


@pytest.mark.parametrize("value, must", [("true", True), ("1", True), ("", False), ("false", False)])
def test_ci_variable(monkeypatch, value, must):
    monkeypatch.setenv("CI", value)
    assert must_build() is must
