"""Where an experiment lives, and whether it may be started or resumed there.

Kept free of torch and Ray imports, so that a bad name or path is refused at once.
"""

from __future__ import annotations

from pathlib import Path

from ryot_ray.config import Config, ConfigError, load_config

CONFIG_FILE = "config.yaml"


def experiment_dir(results_dir: Path, experiment: str, resume: bool) -> Path:
    """The experiment's folder; an existing one is only reused when resuming."""
    directory = Path(results_dir).resolve() / experiment
    if resume and not (directory / CONFIG_FILE).is_file():
        raise ConfigError(f"--resume {experiment}: no experiment at {directory}")
    if not resume and directory.exists():
        raise ConfigError(
            f"{directory} exists; pass --resume {experiment} to continue it, or choose another --name"
        )
    return directory


def resume_config(directory: Path, overrides: list[str]) -> Config:
    """The config an experiment was started with, with `overrides` applied."""
    return load_config(directory / CONFIG_FILE, overrides)
