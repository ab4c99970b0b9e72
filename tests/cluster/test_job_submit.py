"""`ray job submit` of the smoke search on a real two-node cluster: the job succeeds,
trials run on both nodes and every report lands in the storage the job was given."""

import json
import subprocess
import sys

import pytest

from tests.cluster.conftest import RAY
from tests.e2e.test_cli_train import REPO

pytestmark = [pytest.mark.ray, pytest.mark.cluster]


def test_submitted_search_uses_both_nodes(two_nodes, tmp_path):
    _, dashboard, env = two_nodes
    job = subprocess.run(
        [RAY, "job", "submit", "--address", dashboard, "--working-dir", str(REPO), "--",
         sys.executable, "-m", "ryot_ray", "tune", "--space", "search_spaces/smoke.yaml",
         "--results-dir", str(tmp_path), "--name", "on-cluster"],
        env=env, capture_output=True, text=True, timeout=900)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    assert "succeeded" in job.stdout
    summary = json.loads((tmp_path / "on-cluster" / "tune_summary.json").read_text())
    nodes = {trial["node_id"] for trial in summary["trials"] if "node_id" in trial}
    assert len(nodes) == 2, summary["trials"]
    assert (tmp_path / "on-cluster" / "inference_validation_report.json").is_file()
