"""The ``ssondo`` command line: help for every command without importing torch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_package_and_core_report_the_installed_version():
    from importlib import metadata

    import pyssondo
    from pyssondo import _core

    assert pyssondo.__version__ == metadata.version("ssondo")
    assert _core.__version__ == pyssondo.__version__
