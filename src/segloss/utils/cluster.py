"""Where the processes of a run come from, and how Lightning learns its rank in them.

Three ways to start a multi-process run, none of them home-made:

* **Lightning launches** (``trainer=ddp``, one node, a plain ``python -m segloss.train``): the first
  process re-executes the command once per further device with ``LOCAL_RANK`` set, and Lightning
  passes ``hydra.run.dir`` so all ranks share the run directory.
* **SLURM** (``srun`` or the ``submitit_slurm`` Hydra launcher with ``tasks_per_node =
  trainer.devices``): SLURM starts one task per device; Lightning's ``SLURMEnvironment`` reads the
  ranks from ``SLURM_PROCID``/``SLURM_LOCALID`` and never re-launches. With ``cluster.auto_requeue``
  it saves a checkpoint and requeues the job on ``cluster.requeue_signal`` before the time limit.
* **submitit on this machine** (``hydra/launcher=submitit_local`` with ``tasks_per_node``): submitit
  starts the tasks and :class:`SubmititLocalEnvironment` hands their ranks to Lightning — the same
  mechanism as SLURM, testable without a cluster.

A sweep (Hydra multirun) with more than one device per job must use one of the last two: Lightning
re-executing a multirun command would start the whole sweep again in every child (hydra#2231).
"""

from __future__ import annotations

import os
import signal

from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy

from segloss.errors import ConfigError
from segloss.utils.ranks import RANK_VARIABLES, launch_rank

__all__ = ["RANK_VARIABLES", "SubmititLocalEnvironment", "check_launch", "cluster_plugins", "launch_rank"]


class SubmititLocalEnvironment(ClusterEnvironment):
    """Lightning cluster environment for tasks started by submitit's local executor
    (``SUBMITIT_LOCAL_*`` variables): one node, ``SUBMITIT_LOCAL_NTASKS`` processes, rendezvous on
    127.0.0.1 at ``MASTER_PORT`` or a port derived from the submitit job id (shared by the tasks)."""

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return int(os.environ["MASTER_PORT"])
        return 20000 + int(os.environ["SUBMITIT_LOCAL_JOB_ID"]) % 20000

    @staticmethod
    def detect() -> bool:
        return "SUBMITIT_LOCAL_JOB_ID" in os.environ and "SUBMITIT_LOCAL_NTASKS" in os.environ

    def world_size(self) -> int:
        return int(os.environ["SUBMITIT_LOCAL_NTASKS"]) * int(os.environ.get("SUBMITIT_LOCAL_JOB_NUM_NODES", 1))

    def set_world_size(self, size: int) -> None:
        pass  # given by submitit; a mismatch with the trainer is refused by check_launch before fit

    def global_rank(self) -> int:
        return int(os.environ["SUBMITIT_LOCAL_GLOBALID"])

    def set_global_rank(self, rank: int) -> None:
        pass  # given by submitit

    def local_rank(self) -> int:
        return int(os.environ["SUBMITIT_LOCAL_LOCALID"])

    def node_rank(self) -> int:
        return int(os.environ.get("SUBMITIT_LOCAL_NODEID", 0))


def tasks_mismatch(trainer_world: int, tasks: int, source: str) -> str:
    return (
        f"the trainer expects {trainer_world} processes (trainer.devices × trainer.num_nodes) but the launcher "
        f"started {tasks} ({source}); set tasks_per_node = trainer.devices and nodes = trainer.num_nodes "
        "(configs/launcher/slurm.yaml does this) — see docs/cluster.md"
    )


def cluster_plugins(cluster_cfg) -> list:
    """The Lightning cluster environment for this process, as a Trainer ``plugins`` list ([] = Lightning's
    own detection). ``cluster_cfg``: ``{auto_requeue: bool, requeue_signal: "SIGUSR1"}``."""
    cluster_cfg = cluster_cfg or {}
    if SLURMEnvironment.detect():
        name = str(cluster_cfg.get("requeue_signal", "SIGUSR1"))
        if not hasattr(signal, name):
            raise ConfigError(f"cluster.requeue_signal={name!r} is not a signal name; use e.g. SIGUSR1")
        return [
            SLURMEnvironment(
                auto_requeue=bool(cluster_cfg.get("auto_requeue", True)), requeue_signal=getattr(signal, name)
            )
        ]
    if SubmititLocalEnvironment.detect():
        return [SubmititLocalEnvironment()]
    return []


def check_launch(trainer, multirun: bool) -> None:
    """Refuse the process layouts that would hang or duplicate work, before any process starts."""
    env = trainer.strategy.cluster_environment if hasattr(trainer.strategy, "cluster_environment") else None
    external = env is not None and env.creates_processes_externally
    expected = trainer.num_devices * trainer.num_nodes  # what the config asks for; the launcher's count may differ
    if isinstance(env, SubmititLocalEnvironment | SLURMEnvironment) and env.world_size() != expected:
        source = "submitit tasks_per_node × nodes" if isinstance(env, SubmititLocalEnvironment) else "SLURM_NTASKS"
        raise ConfigError(tasks_mismatch(expected, env.world_size(), source))
    buffers = getattr(trainer.strategy, "_ddp_kwargs", {}).get("broadcast_buffers", True)
    if expected > 1 and isinstance(trainer.strategy, DDPStrategy) and buffers:
        raise ConfigError(
            "a DDP strategy with broadcast_buffers=True syncs BatchNorm buffers at every forward, which hangs "
            "when validation shards differ in length; use trainer=ddp|ddp_cpu or set "
            "trainer.strategy.broadcast_buffers=false (DDPStrategy)"
        )
    if multirun and expected > 1 and not external:
        raise ConfigError(
            f"this sweep job asks for {expected} processes, but a multirun cannot let Lightning start "
            "them (each would re-run the whole sweep). Launch one task per device instead: "
            "hydra/launcher=submitit_local hydra.launcher.tasks_per_node=<devices> on one machine, or "
            "launcher=slurm on a cluster (docs/cluster.md)"
        )
