"""Progress bars show on a terminal and keep captured output clean."""

import io
import sys

from ryot_ray.progress_bar import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_on_a_terminal_and_nothing_in_captured_output(monkeypatch, capsys):
    assert list(progress(range(3), "rounds")) == [0, 1, 2]
    assert capsys.readouterr().err == ""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(progress(range(3), "rounds")) == [0, 1, 2]
    assert "rounds:" in terminal.getvalue() and "/3 [" in terminal.getvalue()
