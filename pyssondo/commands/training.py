"""What ``ssondo distill`` and ``ssondo adapt`` share: running a training job in the torchrun
process group, with a full disk reported as one line and Ctrl-C answered with the command
that resumes."""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Tuple


def resume_hint(command_line: str, out: str, config_hash: str, resume: Optional[str]) -> str:
    """How to continue a run interrupted by Ctrl-C: ``command_line --resume RUN_DIR`` with the
    run folder that holds its last checkpoint (the newest under ``out`` with ``config_hash``,
    or the one ``resume`` named)."""
    from pyssondo.train.rundir import find_resumable

    if resume and resume != "auto":
        return f"continue with: {command_line} --resume {resume}"
    run = find_resumable(out, config_hash)
    if run is None:
        return "no checkpoint was written yet; run the same command to start again"
    return f"the last checkpoint is kept; continue with: {command_line} --resume {run.path}"


def run_training(command: str, device: str, job: Callable[[], Any],
                 interrupted: Optional[Callable[[], str]] = None) -> Tuple[Optional[Any], int]:
    """Runs ``job()`` inside the process group of a torchrun launch (none otherwise).

    Returns ``(result, 0)`` on the rank that reports (rank 0, or the only process), ``(None, 0)``
    on the other ranks; ``(None, 130)`` after Ctrl-C, printing ``interrupted()`` (e.g.
    :func:`resume_hint`) when given; ``(None, 1)`` after printing one line for an OSError: for
    a full disk it says how to continue, and that the previous checkpoint is intact only when
    the failed write was a checkpoint that existed before. Missing or unreadable files are
    raised as they are.
    """
    from pyssondo.train.distributed import is_main, process_group

    try:
        with process_group(device):
            result = job()
            main = is_main()
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(f"ssondo {command}: interrupted; {interrupted()}", file=sys.stderr)
        return None, 130
    except OSError as e:
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        from pathlib import Path

        from pyssondo.errors import disk_full_message

        full = disk_full_message(e)
        kept = bool(e.filename) and Path(e.filename).suffix == ".pt" and Path(e.filename).exists()
        hint = (f"; {'the previous checkpoint is intact; ' if kept else ''}free space and "
                f"rerun with --resume auto") if full else ""
        print(f"ssondo {command}: error: {full or e}{hint}", file=sys.stderr)
        return None, 1
    return (result if main else None), 0
