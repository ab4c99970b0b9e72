import json

import pytest

from ryot_ray.cli import main
from ryot_ray.kernels import autotune as tuning
from ryot_ray.kernels.native import constants
from native_marks import needs_native

pytestmark = needs_native


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_autotune_caches_the_fastest_measured_tile():
    entries = tuning.autotune([(64, 96)], rounds=2, calls=2, cycle_bytes=2**16)
    entry = entries["64x96"]
    decode = entry["decode_microseconds"]
    assert entry["rows_per_tile"] == int(min(decode, key=decode.get).split("=")[1])
    assert set(decode) == {f"rows={r}" for r in constants().tile_rows}
    cached = json.loads(tuning.cache_path().read_text())
    assert cached["64x96"]["rows_per_tile"] == entry["rows_per_tile"]
    assert tuning.cache_path().name == f"autotune-{tuning.cpu_facts()['signature']}.json"
    assert tuning.tile_for(64, 96, tuning.load_cache()) == {k: entry[k] for k in tuning.DEFAULT_TILE}
    assert tuning.tile_for(1, 1, tuning.load_cache()) == tuning.DEFAULT_TILE


def test_token_tiles_fit_the_registers():
    assert tuning.tokens_for(1) == [2, 4, 8] and tuning.tokens_for(4) == [2, 4] and tuning.tokens_for(8) == [2]


def test_broken_cache_reads_as_empty():
    path = tuning.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert tuning.load_cache() == {}


def test_cli_autotune(tmp_path, capsys):
    code = main(["bench", "kernels", "--autotune", "--shapes", "64x32", "--rounds", "1", "--calls", "1",
                 "--results-dir", str(tmp_path)])
    assert code == 0 and "64x32" in capsys.readouterr().out
    assert list((tmp_path / "bench").glob("autotune-*.json"))
