"""The allocator settings a training process gets, and the fresh processes that measure
memory with them."""

import os

import pytest

from ryot_ray.memory import in_fresh_process, training_allocator_env


@pytest.mark.parametrize("modes, given", [("always [madvise] never", True), ("[always] madvise never", True),
                                          ("always madvise [never]", False)])
def test_the_allocator_settings_need_huge_pages(tmp_path, modes, given):
    huge_pages = tmp_path / "enabled"
    huge_pages.write_text(modes + "\n")
    env = training_allocator_env(huge_pages)
    assert bool(env) is given
    if given:
        assert env == {"MALLOC_MMAP_THRESHOLD_": "4194304", "THP_MEM_ALLOC_ENABLE": "1"}
    assert training_allocator_env(tmp_path / "missing") == {}


def _environment(*names: str) -> dict:
    return {name: os.environ.get(name) for name in names}


def test_a_fresh_process_gets_the_env_and_the_parent_keeps_its_own(monkeypatch):
    monkeypatch.setenv("RYOT_TEST_KEPT", "parent")
    monkeypatch.delenv("RYOT_TEST_ADDED", raising=False)
    child = in_fresh_process(_environment, "RYOT_TEST_KEPT", "RYOT_TEST_ADDED",
                             env={"RYOT_TEST_KEPT": "child", "RYOT_TEST_ADDED": "1"})
    assert child == {"RYOT_TEST_KEPT": "child", "RYOT_TEST_ADDED": "1"}
    assert _environment("RYOT_TEST_KEPT", "RYOT_TEST_ADDED") == {"RYOT_TEST_KEPT": "parent", "RYOT_TEST_ADDED": None}
