"""What ``ssondo distill`` and ``ssondo adapt`` share: running a training job in the torchrun
process group, with a full disk reported as one line."""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Tuple


def run_training(command: str, device: str, job: Callable[[], Any]
                 ) -> Tuple[Optional[Any], int]:
    """Runs ``job()`` inside the process group of a torchrun launch (none otherwise).

    Returns ``(result, 0)`` on the rank that reports (rank 0, or the only process), ``(None, 0)``
    on the other ranks, and ``(None, 1)`` after printing one line for any other OSError; for a
    full disk it says how to continue, and that the previous checkpoint is intact only when
    the failed write was a checkpoint that existed before. Missing or unreadable files are
    raised as they are.
    """
    from pyssondo.train.distributed import is_main, process_group

    try:
        with process_group(device):
            result = job()
            main = is_main()
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
