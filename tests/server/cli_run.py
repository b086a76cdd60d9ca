"""Running ``tmpq`` (``server.cli.main``) in the test process, and checking one-line answers."""

from __future__ import annotations

import os
import subprocess

import pytest

from server.cli import main


def isolate_env(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """No ``TMPQ_*`` variable of the caller's environment leaks in, nor ``COLUMNS`` (pytest-xdist's workers set it to
    80, which wraps the CLI's tables); the CLI talks to ``url``."""
    for name in [k for k in os.environ if k.startswith("TMPQ_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setenv("TMPQ_URL", url)


def run_main(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    """``tmpq ARGV`` in this process: exit code and what it printed."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(argv), code, out, err)


def one_line(text: str) -> str:
    """The only line of ``text`` (asserts there is exactly one and no traceback)."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {text!r}"
    assert "Traceback" not in text
    return lines[0]
