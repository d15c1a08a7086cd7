"""The ``launch`` params section: the command that starts each multi-process-capable stage.

``dvc.yaml`` runs ``${launch.<stage>} -m stages.<stage> ...``, so the number of processes (or
GPUs) comes from params like everything else::

    launch:
      ground: python                                  # one process (default)
      segment: torchrun --nproc_per_node 2            # 2 processes; on CPU a gloo world
      train: accelerate launch --num_processes 8      # 8 GPUs
      evaluate: python

``ground``, ``segment``, ``train`` and ``evaluate`` give the same outputs on any number of
processes (each stage's tests check it), so a changed launcher reruns the stage (DVC sees a new
``cmd``) and ends with the same files. On a CPU-only machine ``accelerate launch
--num_processes N`` falls back to one process unless ``--multi_gpu`` is added; ``torchrun``
forms the N-process world directly.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from pipeline.core.config import ConfigError

LAUNCHERS = ("python", "torchrun", "accelerate")


@dataclass(frozen=True)
class LaunchConfig:
    """Command prefix (before ``-m stages.<stage>``) per stage."""

    ground: str = "python"
    segment: str = "python"
    train: str = "python"
    evaluate: str = "python"

    def validate(self) -> None:
        for stage in ("ground", "segment", "train", "evaluate"):
            words = shlex.split(getattr(self, stage))
            if not words or not any(words[0] == name or words[0].endswith(f"/{name}") or
                                    words[0].startswith("python") for name in LAUNCHERS):
                raise ConfigError(f"launch.{stage}: {getattr(self, stage)!r} must start with python, torchrun "
                                  f"or accelerate (it is followed by '-m stages.{stage}')")
            if words[0] == "accelerate" and words[1:2] != ["launch"]:
                raise ConfigError(f"launch.{stage}: write 'accelerate launch ...', got {getattr(self, stage)!r}")
            if "-m" in words:
                raise ConfigError(f"launch.{stage}: leave out '-m' (dvc.yaml adds '-m stages.{stage}')")
