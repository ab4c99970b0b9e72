"""Which cluster a run joins, and the one line for an address nothing answers at."""

import socket

import pytest

from ryot_ray.cluster import check_reachable, embedded
from ryot_ray.config import ConfigError


def test_only_a_run_without_any_address_starts_its_own_cluster(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert embedded(None) and not embedded("auto")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # what `ray job submit` gives its driver
    assert not embedded(None)


def test_an_address_is_checked_before_ray_retries_it():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        check_reachable(f"127.0.0.1:{listening.getsockname()[1]}")  # something answers: Ray's to judge
        port = listening.getsockname()[1]
    with pytest.raises(ConfigError, match=f"--address 127.0.0.1:{port}: no Ray cluster answers there"):
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="no Ray cluster answers there"):
        check_reachable("127.0.0.1:not-a-port")
    for resolved_by_ray in ("auto", "local", "ray://head:10001"):
        check_reachable(resolved_by_ray)
