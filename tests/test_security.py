"""What the package must never do: unpickle files, load YAML unsafely, or open the
dashboard beyond this machine unless asked."""

import inspect
import re
from pathlib import Path

from ryot_ray import cli, cluster

PACKAGE = Path(__file__).resolve().parents[1] / "ryot_ray"
ARGS = {"train": ["--config", "c.yaml"], "tune": ["--space", "s.yaml"], "validate": ["--checkpoint", "x"],
        "info": []}
UNSAFE = re.compile(r"torch\.load\(|pickle\.loads?\(|yaml\.load\(|yaml\.unsafe_load|cloudpickle\.loads?\(|0\.0\.0\.0")


def test_no_unpickling_or_unsafe_yaml_in_the_package():
    found = [f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), start=1) if UNSAFE.search(line)]
    assert found == []


def test_the_dashboard_listens_on_localhost_unless_asked():
    assert inspect.signature(cluster.connect).parameters["dashboard_host"].default == "127.0.0.1"
    for command in ("train", "tune", "validate", "info"):
        assert cli._parser().parse_args([command, *ARGS[command]]).dashboard_host == "127.0.0.1"
