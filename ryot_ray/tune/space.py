"""The search space: a YAML file of knobs, each a distribution or a constant, checked
against the run config before Ray starts.

```yaml
config: configs/default.yaml      # the run config every trial starts from
samples: 8                        # trials (a grid multiplies them)
search: random                    # random | optuna
scheduler: {name: asha, max_t: 5, grace_period: 1, reduction_factor: 2}
accuracy_floor: 0.95              # fraction of the reference accuracy a trial must keep
measure_problems: 48              # validation problems a trial answers after each epoch
start_from: scratch               # scratch | reference: trials convert the trained fp32 reference
speed_at: model                   # model | a preset or transformers config: the shape speed is priced at
space:
  sparse_k: {choice: [1.0, 0.5]}  # short names of the adaptive knobs ...
  train.lr: {loguniform: [5.0e-4, 3.0e-3]}   # ... or any config key
  train.epochs: 5                 # a constant
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ryot_ray.config import Config, ConfigError, load_config, read_yaml, shipped, with_overrides
from ryot_ray.train.experiment import CONFIG_FILE

KNOB_KEYS = {
    "tile_size": "inference.tile_size",
    "mrl_depth": "model.mrl_depth",
    "ffn_level": "inference.ffn_level",
    "sparse_k": "model.sparse_k",
    "rlvr_paths": "inference.rlvr_paths",
}
DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
SEARCHES = ("random", "optuna")
SCHEDULERS = ("asha", "fifo")
STARTS = ("scratch", "reference")
TOP_LEVEL = ("config", "samples", "search", "scheduler", "accuracy_floor", "measure_problems", "start_from",
             "speed_at", "space")
SPACE_FILE = "search_space.yaml"  # the space as an experiment ran it, kept for --resume


@dataclass(frozen=True)
class Knob:
    key: str  # a dotted config key
    kind: str  # one of DISTRIBUTIONS, or "constant"
    values: tuple  # the choices, the grid, the (low, high) range, or (the constant,)


@dataclass
class Scheduler:
    name: str = "asha"
    max_t: int = 5  # epochs, the most any trial trains
    grace_period: int = 1  # epochs before ASHA may stop a trial
    reduction_factor: int = 2


@dataclass
class SearchSpace:
    source: str
    base: Config
    knobs: list[Knob]  # the searched ones; constants are folded into `base`
    samples: int = 8
    search: str = "random"
    scheduler: Scheduler = field(default_factory=Scheduler)
    accuracy_floor: float = 0.95
    measure_problems: int = 48
    # scratch: each trial builds its model as the base config says; reference: from the
    # search's trained fp32 reference, which the trial's knobs then convert and fine-tune
    start_from: str = "scratch"
    # model: a trial's speedup is timed on its own model; a preset (e.g. 1b) or a local
    # transformers config: its work is priced at that shape, with its knobs, random weights
    speed_at: str = "model"


def _fail(source: str, key: str, message: str) -> None:
    raise ConfigError(f"{source}: {key}: {message}")


def _knob(source: str, name: Any, spec: Any, base: Config) -> Knob:
    key = KNOB_KEYS.get(name, name)
    if not isinstance(key, str) or "." not in key:
        _fail(source, f"space.{name}", f"unknown knob (use {', '.join(KNOB_KEYS)} or a config key like train.lr)")
    where = f"space.{name}"
    if not isinstance(spec, dict):
        kind, values = "constant", (spec,)
    else:
        if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            _fail(source, where, f"expected one of {', '.join(DISTRIBUTIONS)} or a constant, got {spec!r}")
        kind, values = next(iter(spec.items()))
        if not isinstance(values, list) or not values:
            _fail(source, where, f"{kind} needs a non-empty list, got {values!r}")
        values = tuple(values)
        if kind in ("uniform", "loguniform", "randint"):
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            if len(values) != 2 or not numbers or values[0] >= values[1]:
                _fail(source, where, f"{kind} needs [low, high] with low < high, got {list(values)}")
            if kind == "loguniform" and values[0] <= 0:
                _fail(source, where, f"loguniform needs a positive low end, got {values[0]}")
            if kind == "randint" and not all(isinstance(v, int) for v in values):
                _fail(source, where, f"randint needs whole numbers, got {list(values)}")
    # every value the knob can take (a range: both ends) must make a valid config
    checked = values if kind not in ("uniform", "loguniform", "randint") else (values[0], values[1] - (kind == "randint"))
    for value in checked:
        try:
            with_overrides(base, [f"{key}={json.dumps(value)}"], f"{source}: {where}")
        except ConfigError as error:
            raise ConfigError(str(error).replace(f"{source}: {where}: ", f"{source}: {where} = {value!r}: ", 1)) from None
    return Knob(key, kind, values)


SHAPE_KNOBS = ("model.ffn_activation", "model.tie_embeddings")  # the reference's shape too


def load_space(path: str | Path, config_path: str | Path | None = None, overrides: list[str] = ()) -> SearchSpace:
    """Read and check a search space; `config_path` replaces the space's `config`, and
    `overrides` (`key=value`) change it."""
    path = shipped(path)
    source = str(path)
    data = read_yaml(path)
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        _fail(source, unknown[0], f"unknown key (allowed: {', '.join(TOP_LEVEL)})")
    base = load_config(config_path or data.get("config", "configs/default.yaml"), overrides)
    space = data.get("space")
    if not isinstance(space, dict) or not space:
        _fail(source, "space", "expected a mapping of knobs to distributions")
    samples, measure_problems = data.get("samples", 8), data.get("measure_problems", 48)
    for name, value in (("samples", samples), ("measure_problems", measure_problems)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _fail(source, name, f"expected a whole number >= 1, got {value!r}")
    search = data.get("search", "random")
    if search not in SEARCHES:
        _fail(source, "search", f"{search!r} is not one of {', '.join(SEARCHES)}")
    start_from = data.get("start_from", "scratch")
    if start_from not in STARTS:
        _fail(source, "start_from", f"{start_from!r} is not one of {', '.join(STARTS)}")
    speed_at = data.get("speed_at", "model")
    if not isinstance(speed_at, str) or not speed_at:
        _fail(source, "speed_at", f"expected model, a preset or a transformers config path, got {speed_at!r}")
    floor = data.get("accuracy_floor", 0.95)
    if not isinstance(floor, (int, float)) or isinstance(floor, bool) or not 0 <= floor <= 1:
        _fail(source, "accuracy_floor", f"expected a fraction of the reference accuracy in [0, 1], got {floor!r}")
    scheduler = _scheduler(source, data.get("scheduler", {}))
    knobs = [_knob(source, name, spec, base) for name, spec in space.items()]
    keys = [knob.key for knob in knobs]
    duplicate = next((key for key in keys if keys.count(key) > 1), None)
    if duplicate:
        _fail(source, "space", f"{duplicate} is given twice")
    if search == "optuna" and any(knob.kind == "grid" for knob in knobs):
        _fail(source, "search", "optuna cannot search a grid; use choice")
    if "train.epochs" in keys:
        _fail(source, "space.train.epochs", "the scheduler's max_t sets the epochs of every trial")
    searched_data = next((k.key for k in knobs if k.key.startswith("data.") and k.kind != "constant"), None)
    if searched_data:
        _fail(source, f"space.{searched_data}", "data.* can only be a constant: every trial and the reference "
              "answer the same problems")
    searched_shape = next((k.key for k in knobs if k.key in SHAPE_KNOBS and k.kind != "constant"), None)
    if searched_shape:
        _fail(source, f"space.{searched_shape}", "can only be a constant: the reference (and the weights a "
              "trial starts from) has one FFN gate and one embedding layout")
    constants = [f"{k.key}={json.dumps(k.values[0])}" for k in knobs if k.kind == "constant"]
    base = with_overrides(base, constants, source)  # constants hold for the reference too
    knobs = [k for k in knobs if k.kind != "constant"]
    return SearchSpace(source, base, knobs, samples, search, scheduler, float(floor), measure_problems, start_from,
                       speed_at)


def save_space(space: SearchSpace, directory: Path) -> None:
    """Keep the space and its base config in the experiment, as run (`--samples` applied)."""
    data = read_yaml(Path(space.source))
    data.update(samples=space.samples, config=str(directory / CONFIG_FILE))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(yaml.safe_dump(space.base.to_dict(), sort_keys=False))
    (directory / SPACE_FILE).write_text(yaml.safe_dump(data, sort_keys=False))


def _scheduler(source: str, data: Any) -> Scheduler:
    if not isinstance(data, dict):
        _fail(source, "scheduler", f"expected a mapping, got {data!r}")
    unknown = sorted(set(data) - {"name", "max_t", "grace_period", "reduction_factor"})
    if unknown:
        _fail(source, f"scheduler.{unknown[0]}", "unknown key (allowed: name, max_t, grace_period, reduction_factor)")
    scheduler = Scheduler(**data)
    if scheduler.name not in SCHEDULERS:
        _fail(source, "scheduler.name", f"{scheduler.name!r} is not one of {', '.join(SCHEDULERS)}")
    for name in ("max_t", "grace_period", "reduction_factor"):
        value = getattr(scheduler, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _fail(source, f"scheduler.{name}", f"expected a whole number >= 1, got {value!r}")
    if scheduler.grace_period > scheduler.max_t:
        _fail(source, "scheduler.grace_period", f"{scheduler.grace_period} is above max_t {scheduler.max_t}")
    if scheduler.reduction_factor < 2:
        _fail(source, "scheduler.reduction_factor", "must be at least 2")
    return scheduler
