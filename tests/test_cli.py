"""The ``ssondo`` command line: help for every command without importing torch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyssondo import cli

ROOT = Path(__file__).resolve().parents[1]


def test_help_of_every_command_never_imports_torch():
    # Building the parser runs every command's add_arguments.
    code = ("import sys; from pyssondo import cli; cli.build_parser(); print(sorted("
            "m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout
    assert out.strip() == "[]"
    for command in cli.COMMANDS:
        res = subprocess.run([sys.executable, "-m", "pyssondo", command, "--help"],
                             capture_output=True, text=True, env={**os.environ,
                                                                   "PYTHONPATH": str(ROOT)})
        assert res.returncode == 0 and "examples" in res.stdout.lower(), (command, res.stderr)


def _help_line(argv, start, monkeypatch, capsys):
    """The line of ``ssondo ARGV --help`` that documents ``start`` (an option or argument)."""
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: names are never wrapped
    with pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    return next(ln for ln in capsys.readouterr().out.splitlines()
                if ln.strip().startswith(start + " "))


def test_help_lists_exactly_what_the_registries_build(monkeypatch, capsys):
    """pyssondo.names (torch-free, read by --help) equals the torch-side registries, name for
    name and in order, and the help of distill, init, students and teacher build lists them."""
    from pyssondo.heads import list_heads
    from pyssondo.losses import list_losses
    from pyssondo.names import HEADS, LOSSES, STUDENTS, TEACHERS
    from pyssondo.students import list_students
    from pyssondo.teachers import list_teachers

    assert STUDENTS.names == tuple(list_students())
    assert LOSSES.names == tuple(list_losses())
    assert TEACHERS.names == tuple(list_teachers())
    assert HEADS.names == tuple(list_heads())

    students = ", ".join(list_students())
    for argv, start in ((["distill"], "--student"), (["init"], "STUDENT"),
                        (["students"], "--students")):
        assert students in _help_line(argv, start, monkeypatch, capsys), argv
    assert ", ".join(list_losses()) in _help_line(["distill"], "--loss", monkeypatch, capsys)
    assert ", ".join(list_heads()) in _help_line(["distill"], "--head", monkeypatch, capsys)
    assert ", ".join(list_teachers()) in _help_line(["teacher", "build"], "NAME", monkeypatch,
                                                   capsys)


def test_package_and_core_report_the_installed_version():
    from importlib import metadata

    import pyssondo
    from pyssondo import _core

    assert pyssondo.__version__ == metadata.version("ssondo")
    assert _core.__version__ == pyssondo.__version__
