"""The Grafana dashboard of the trial figures: one panel per figure Ray exports, written
where Ray's Grafana set-up looks."""

import json
import re

from ryot_ray.tune.metrics import FIGURES, GRAFANA_FILE, PREFIX, RAY_GRAFANA_DASHBOARDS, grafana_dashboard, \
    write_grafana_dashboard


def test_every_figure_has_a_panel_filtered_by_experiment_and_trial():
    dashboard = grafana_dashboard()
    queries = {panel["title"]: panel["targets"][0]["expr"] for panel in dashboard["panels"]}
    metrics = {re.match(r"(\w+)\{", expr).group(1) for expr in queries.values()}
    assert metrics == {f"ray_{PREFIX}{name}" for name in FIGURES}
    assert all('experiment=~"$experiment"' in expr and 'trial=~"$trial"' in expr for expr in queries.values())
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"datasource", "experiment", "trial"}
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(FIGURES)


def test_written_beside_the_experiment_and_into_ray_s_grafana_folder_when_it_is_here(tmp_path):
    session = tmp_path / "session"
    assert write_grafana_dashboard(tmp_path / "experiment", session) == [tmp_path / "experiment" / GRAFANA_FILE]
    (session / RAY_GRAFANA_DASHBOARDS).mkdir(parents=True)
    written = write_grafana_dashboard(tmp_path / "experiment", session)
    assert written[1] == session / RAY_GRAFANA_DASHBOARDS / GRAFANA_FILE
    assert all(json.loads(path.read_text()) == grafana_dashboard() for path in written)
    assert write_grafana_dashboard(tmp_path / "elsewhere", None) == [tmp_path / "elsewhere" / GRAFANA_FILE]
