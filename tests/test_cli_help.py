"""Issue 20's "logging and help": tilert-compile answers --version, groups its ablation
switches in --help, and tc.compile's progress goes through `logging`."""

from __future__ import annotations

import logging

import pytest

import tilert_compiler as tc
from tilert_compiler.cli import main as compile_main


def test_version_answers(capsys):
    with pytest.raises(SystemExit) as e:
        compile_main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"tilert-compile {tc.__version__}"


def test_help_puts_the_ablation_switches_in_their_own_group(capsys):
    with pytest.raises(SystemExit):
        compile_main(["--help"])
    text = capsys.readouterr().out
    head = text.index("ablation switches")
    for flag in ("--no-weight-ring", "--no-flags", "--no-cache-prefetch"):
        assert text.index(f"  {flag}") > head, flag  # listed under the heading, not before
    for flag in ("--dump-ir", "--ring-stages", "--prefill-chunk"):
        assert text.index(f"  {flag}") < head, flag


def test_compile_reports_its_stages_through_logging():
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    lg = logging.getLogger("tilert_compiler")
    keep, level = Keep(), lg.level
    lg.addHandler(keep)
    lg.setLevel(logging.INFO)
    try:
        tc.compile("tiny-llama", nvcc=False, prefill_chunk=0)
    finally:
        lg.removeHandler(keep)
        lg.setLevel(level)
    stages = [m.split()[0] for m in seen]
    assert stages[:3] == ["graph", "fuse", "tile"] and "plan" in stages


def test_quiet_keeps_progress_off_stderr(tmp_path, capsys):
    assert (
        compile_main(["tiny-llama", "--no-nvcc", "--no-run", "-q", "-o", str(tmp_path / "a")]) == 0
    )
    assert capsys.readouterr().err == ""
    assert compile_main(["tiny-llama", "--no-nvcc", "--no-run", "-o", str(tmp_path / "b")]) == 0
    assert "wrote " in capsys.readouterr().err
