"""Checkpoints: safetensors weights and optimizer state, JSON for everything else.

A checkpoint directory holds `model.safetensors`, `optimizer.safetensors` (optional),
`state.json` (run config, the `transformers` config, progress and history, and the
SHA-256 of each tensor file) and the tokenizer files. Where `transformers` computes the
same model from those weights, it is also a `save_pretrained` directory: a `config.json`
beside them lets `AutoModelForCausalLM.from_pretrained` load it (`exported_config`).
ryot-ray reads `state.json`, not `config.json`. Loading checks the files against their digests
first, so a truncated or corrupted file is named instead of loaded, and reads tensors and
JSON only; nothing is unpickled. Directories and reports are written next to their
destination and renamed into place, so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ryot_ray.atomic import write_json_atomic
from ryot_ray.config import Config, ConfigError
from ryot_ray.data.tokenizer import load_tokenizer
from ryot_ray.model.build import ARCHITECTURES, build_model, exported_config
from ryot_ray.model.pretrained import local_copy, pretrained_model_config

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
HF_CONFIG_FILE = "config.json"  # what `from_pretrained` reads


class CheckpointError(ConfigError):
    """A checkpoint that is missing, truncated, corrupted or not one of ours: bad input,
    reported as one line like a bad config."""


@dataclass
class TrainingState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    status: str = "running"  # running | finished | diverged
    history: list[dict] = field(default_factory=list)  # one record per completed epoch
    anomalies: list[dict] = field(default_factory=list)
    machine: dict = field(default_factory=dict)  # facts of the rank-0 worker
    # every start of the worker group: {"run", "epoch", "step", "world_size"}; a run's
    # starts after its first are restarts after a worker failure
    starts: list[dict] = field(default_factory=list)


@contextmanager
def atomic_directory(destination: Path):
    """Yield a temporary sibling directory; on success it replaces `destination`."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}."))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = destination.with_name(f".{destination.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if destination.exists():
        destination.rename(old)
    tmp.rename(destination)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    directory: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: Config,
    state: TrainingState,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / MODEL_FILE))
    tokenizer.save_pretrained(directory)
    if (exported := exported_config(model, config.model)) is not None:
        exported.to_json_file(directory / HF_CONFIG_FILE)
    param_groups = None
    if optimizer is not None:
        tensors, param_groups = _flatten_optimizer(optimizer)
        save_file(tensors, str(directory / OPTIMIZER_FILE))
    record = {
        "config": config.to_dict(),
        "llama_config": model.config.to_dict(),  # the transformers config, of any architecture (an old name)
        "state": asdict(state),
        "optimizer_param_groups": param_groups,
        "files": {name: _sha256(directory / name) for name in (MODEL_FILE, OPTIMIZER_FILE)
                  if (directory / name).is_file()},
    }
    write_json_atomic(directory / STATE_FILE, record)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**24), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint_record(directory: Path, verify: tuple[str, ...] = ()) -> dict:
    """`state.json`, once the tensor files named in `verify` (those about to be read) are
    there with the digests it records."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {directory} is not a ryot-ray checkpoint")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    for name, digest in record.get("files", {}).items():
        if name not in verify:
            continue
        tensors = Path(directory) / name
        if not tensors.is_file():
            raise CheckpointError(f"{tensors}: missing (state.json lists it)")
        if _sha256(tensors) != digest:
            raise CheckpointError(f"{tensors}: truncated or corrupted (its SHA-256 is not the one state.json "
                                  "records); restore it or resume from an earlier checkpoint")
    return record


def import_pretrained(name: str, directory: Path) -> Config:
    """A `transformers` checkpoint (a local directory or a hub name) as a checkpoint of
    this layout at `directory`, the model as its checkpoint computes it: a ternary one
    (a bitnet model stored ternary) that validate, generate, freeze and bench decode take
    as it is, or a full-precision one (a reference for validate, a start for train); its
    config."""
    config = Config(model=pretrained_model_config(name))
    tokenizer = load_tokenizer(str(local_copy(name)))
    save_checkpoint(directory, build_model(config.model, tokenizer), tokenizer, config,
                    TrainingState(status="finished"))
    return config


def load_checkpoint(directory: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Config, TrainingState]:
    """The model (in eval mode), its tokenizer, its run config and its training state."""
    directory = Path(directory)
    record = read_checkpoint_record(directory, verify=(MODEL_FILE,))
    config = Config.from_dict(record["config"], str(directory / STATE_FILE))
    tokenizer = load_tokenizer(str(directory))
    hf_config = ARCHITECTURES[config.model.architecture].config.from_dict(record["llama_config"])
    model = build_model(config.model, tokenizer, hf_config=hf_config)
    load_weights(directory, model)
    return model.eval(), tokenizer, config, TrainingState(**record["state"])


def load_weights(directory: Path, model: torch.nn.Module) -> None:
    path = Path(directory) / MODEL_FILE
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"{path}: cannot be read ({error})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not match the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )


def load_optimizer(directory: Path, optimizer: torch.optim.Optimizer, record: dict) -> None:
    """The optimizer state of a checkpoint whose `record` (`read_checkpoint_record`) was read."""
    path = Path(directory) / OPTIMIZER_FILE
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"{path}: cannot be read ({error})") from None
    state: dict[int, dict] = {}
    for key, tensor in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": record["optimizer_param_groups"]})


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state_dict = optimizer.state_dict()
    tensors = {
        f"{index}.{name}": value.contiguous()
        for index, values in state_dict["state"].items()
        for name, value in values.items()
    }
    return tensors, state_dict["param_groups"]
