"""This process's rank as its launcher set it, read from the environment alone (no torch, no Lightning): what
the Hydra log-file name (``${rank_suffix:}``) and rank-0-only writes need before anything heavy is imported.
The launchers themselves are in :mod:`segloss.utils.cluster`."""

from __future__ import annotations

import os

# Where each launcher puts the global rank: torchrun/Lightning, SLURM, submitit's local executor, Lightning's
# re-executed children (which have only the local rank on one node).
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID", "LOCAL_RANK")


def launch_rank() -> int:
    """Global rank of this process as its launcher set it (0 when started alone). Known before the
    Trainer exists, so run-directory writes and printing can be limited to rank 0 from the start."""
    for name in RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0
