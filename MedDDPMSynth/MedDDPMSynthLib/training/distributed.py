"""This process's place among torchrun processes: training (DDP) and sharded dataset generation use it.

Without ``WORLD_SIZE`` > 1 everything runs as rank 0 of 1 on the chosen device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from MedDDPMSynthLib.model.api import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """This process's place in data-parallel training (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (NCCL on CUDA, else gloo)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo(), resolve_device(device)
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    cuda = torch.cuda.is_available() and str(device) in ("auto", "cuda")
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), owns), dev
