"""`serve` and the `wtacrs-prof` entry point, which live on the app side (the profiler never imports the app)."""

import re
import webbrowser

import pytest


def test_help_shows_flags_without_a_value():
    """typer's rich help printed `--help <bool>`, as if it took a value."""
    from typer.testing import CliRunner

    from app.cli import cli as app

    runner = CliRunner()
    top = runner.invoke(app, ["--help"]).output
    serve = runner.invoke(app, ["serve", "--help"]).output
    assert "<bool>" not in top + serve
    assert re.search(r"^  --help +Show this message and exit\.$", top, re.M), top
    assert re.search(r"^  --open / --no-open +open the browser once up", serve, re.M), serve
    assert re.search(r"^  --port <int> +port to bind", serve, re.M), serve


@pytest.mark.parametrize("outcome", [False, webbrowser.Error("no runnable browser")])
def test_open_says_so_when_no_browser_can_be_opened(monkeypatch, capsys, outcome):
    from app.cli import open_browser

    def fake_open(url):
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(webbrowser, "open", fake_open)
    assert open_browser("http://127.0.0.1:8000/") is False
    err = capsys.readouterr().err
    assert "no browser could be opened on this machine; visit http://127.0.0.1:8000/ yourself" in err


def test_open_is_quiet_when_a_browser_opens(monkeypatch, capsys):
    from app.cli import open_browser

    monkeypatch.setattr(webbrowser, "open", lambda url: True)
    assert open_browser("http://127.0.0.1:8000/") is True and capsys.readouterr().err == ""
