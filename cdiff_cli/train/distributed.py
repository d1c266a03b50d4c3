"""torch.distributed set-up for ``torchrun``, device selection, and rank-sliced randomness.

The same command runs on one CPU, one GPU or ``torchrun --nproc_per_node N``: when the
launcher's environment variables are present the process group is created here, and only
rank 0 writes files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cdiff_cli.errors import CdiffError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present (one GPU per local rank under torchrun)."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise CdiffError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
        if spec == "cuda":
            return torch.device(f"cuda:{local_rank}")
        try:
            index = int(spec.split(":", 1)[1])
        except ValueError:
            raise CdiffError(f"--device {spec}: expected cuda:N with N a number") from None
        if index >= torch.cuda.device_count():
            raise CdiffError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device(f"cuda:{index}")
    raise CdiffError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")


def init_distributed(device_spec: str) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_spec)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank), device


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple, stable across processes and runs."""
    blob = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & ((1 << 63) - 1)


class StepRandom:
    """Randomness for one micro-batch, drawn for the GLOBAL batch and sliced to this rank.

    A run on N processes with batch B then consumes exactly the random numbers that one
    process with batch N*B consumes, so the two give the same result (and a resumed run
    the same result as an uninterrupted one: nothing depends on hidden RNG state).
    ``DistributedSampler`` gives rank r the global positions r, r+N, r+2N, ...; ``take``
    uses the same interleaving.
    """

    def __init__(self, seed: int, step: int, micro: int, info: DistInfo, local_batch: int,
                 device: torch.device) -> None:
        self._seed = derive_seed(seed, step, micro)
        self.generator = torch.Generator(device="cpu").manual_seed(self._seed)
        self.info = info
        self.local_batch = local_batch
        self.global_batch = local_batch * info.world_size
        self.device = device

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a tensor drawn for the global batch (first dim)."""
        if self.info.world_size == 1:
            return tensor.to(self.device)
        return tensor[self.info.rank :: self.info.world_size].to(self.device)

    def take_local(self, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor that is already this rank's (a data batch), moved to the device."""
        return tensor.to(self.device, non_blocking=True)

    def local_generator(self) -> torch.Generator:
        """A generator for per-rank randomness (cheap per-sample augmentations of local data)."""
        return torch.Generator(device="cpu").manual_seed(derive_seed(self._seed, "local", self.info.rank))

    def randint(self, high: int) -> torch.Tensor:
        return self.take(torch.randint(0, high, (self.global_batch,), generator=self.generator))

    def randn(self, *shape: int) -> torch.Tensor:
        return self.take(torch.randn((self.global_batch, *shape), generator=self.generator))

    def rand(self, *shape: int) -> torch.Tensor:
        return self.take(torch.rand((self.global_batch, *shape), generator=self.generator))
