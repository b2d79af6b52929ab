"""Progress bars off a terminal redraw at most every RF_PROGRESS_SECONDS seconds; on a terminal as tqdm likes."""

from __future__ import annotations

import io

import pytest

from rf_dp_agents.progress import LOG_INTERVAL_S, log_interval, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _redraws(stream: io.StringIO) -> int:
    bar = progress_bar(total=500, desc="work", file=stream)
    for k in range(500):
        bar.update(1)
        bar.set_postfix(k=k)
    bar.close()
    return stream.getvalue().count("\r")


def test_a_log_file_gets_few_redraws_and_a_terminal_many(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RF_PROGRESS_SECONDS", raising=False)
    assert log_interval(io.StringIO()) == LOG_INTERVAL_S and log_interval(Terminal()) is None
    logged = io.StringIO()
    assert _redraws(logged) <= 3  # the first draw and the closing one
    assert "500/500" in logged.getvalue()  # the end is still written
    assert _redraws(Terminal()) > 100  # set_postfix refreshes on a terminal, as tqdm does
    monkeypatch.setenv("RF_PROGRESS_SECONDS", "0")
    assert _redraws(io.StringIO()) > 100


def test_a_bad_interval_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RF_PROGRESS_SECONDS", "soon")
    with pytest.raises(ValueError, match="RF_PROGRESS_SECONDS must be a number of seconds, got 'soon'"):
        progress_bar(total=3, file=io.StringIO())
    monkeypatch.setenv("RF_PROGRESS_SECONDS", "-1")
    with pytest.raises(ValueError, match="RF_PROGRESS_SECONDS must be >= 0"):
        log_interval(io.StringIO())
