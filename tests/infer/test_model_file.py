"""The frozen model file: one aligned blob, memory-mapped, readable without torch."""

import subprocess
import sys

import numpy as np
import pytest

from ryot_ray.infer.freeze import freeze
from ryot_ray.infer.model_file import ALIGN, FrozenModel, ModelFileError
from ryot_ray.train.checkpoint import load_checkpoint
from native_marks import needs_native

pytestmark = needs_native


@pytest.fixture(scope="module")
def frozen(trained_checkpoint):
    model, tokenizer, *_ = load_checkpoint(trained_checkpoint)
    return freeze(model, tokenizer, int8_embeddings=True)


def test_round_trip_memory_maps_aligned_tensors(frozen, tmp_path):
    path = tmp_path / "model.ryot"
    frozen.save(path)
    loaded = FrozenModel.load(path)
    assert loaded.model == frozen.model and loaded.tokenizer == frozen.tokenizer
    assert list(loaded.arrays) == list(frozen.arrays)
    for name, array in frozen.arrays.items():
        got = loaded.arrays[name]
        assert got.dtype == array.dtype and np.array_equal(got, array), name
        assert isinstance(got.base, np.memmap) or isinstance(got, np.memmap)
        assert got.ctypes.data % ALIGN == 0, name
    assert loaded.nbytes == frozen.nbytes
    assert [p.name for p in tmp_path.iterdir()] == ["model.ryot"]  # written atomically


def test_damaged_files_are_refused_by_name(frozen, tmp_path):
    path = tmp_path / "model.ryot"
    frozen.save(path)
    data = path.read_bytes()
    (tmp_path / "short.ryot").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        FrozenModel.load(tmp_path / "short.ryot")
    (tmp_path / "other.ryot").write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(ModelFileError, match="not a ryot-ray frozen model"):
        FrozenModel.load(tmp_path / "other.ryot")
    with pytest.raises(ModelFileError, match="cannot be read"):
        FrozenModel.load(tmp_path / "missing.ryot")


def test_a_process_answers_from_the_file_without_torch(frozen, tmp_path):
    path = tmp_path / "model.ryot"
    frozen.save(path)
    script = (
        "import sys\n"
        "from ryot_ray.infer.deployed import answer_with_file\n"
        f"result = answer_with_file({str(path)!r}, [('rev abc|', 1), ('rev xy|', 1)], {{'rlvr_paths': 2}}, 8, 24, 1)\n"
        "assert not result['torch_imported'] and 'torch' not in sys.modules, 'torch was imported'\n"
        "print(result['answers'], result['peak_rss_mb'])\n"
    )
    output = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    answers, rss = output.rsplit(" ", 1)
    assert answers.startswith("[") and 0 < float(rss) < 400
