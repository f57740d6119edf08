"""DistributedDataParallel plumbing for ``gitseg train`` under ``torchrun``.

``torchrun --nproc_per_node=N $(which gitseg) train DATA --out DIR`` starts N processes with the
usual environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
``setup()`` joins the process group (NCCL on CUDA, gloo on CPU) and ``training.loop.train`` then
wraps the model in ``DistributedDataParallel`` with a ``DistributedSampler``. Every rank reads the
data and validates; rank 0 alone decides (its choices are broadcast), writes bundles and events.
Without those variables everything here is a no-op and training runs in one process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = [
    "any_flag",
    "barrier",
    "broadcast_buffers",
    "broadcast_flag",
    "cleanup",
    "device_for_rank",
    "is_active",
    "is_main",
    "launched_by_torchrun",
    "local_world_size",
    "rank",
    "setup",
    "state_digest",
    "unwrap",
    "world_size",
]


def launched_by_torchrun() -> bool:
    """True when the environment of a torchrun worker is present (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def is_active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_active() else 1


def local_world_size() -> int:
    """Processes on this machine (``LOCAL_WORLD_SIZE``; 1 without torchrun)."""
    if not is_active():
        return 1
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world_size())))
    except ValueError:
        return world_size()


def is_main() -> bool:
    """True on rank 0 (the process that writes files and events)."""
    return rank() == 0


def device_for_rank(preferred: str | None = None) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when CUDA is used, else the CPU."""
    from napari_gitseg.model.device import pick_device

    device = pick_device(preferred)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def setup(device: str | None = None) -> bool:
    """Join the torchrun process group (NCCL on CUDA, gloo otherwise); False when not under torchrun."""
    if not launched_by_torchrun():
        return False
    if is_active():
        return True
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith(("cuda", "auto")))
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend)
    return True


def cleanup() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _flag_tensor(value: bool) -> torch.Tensor:
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    return torch.tensor([1 if value else 0], dtype=torch.int32, device=device)


def any_flag(value: bool) -> bool:
    """True on every rank when ``value`` is True on any rank (a collective: call it on all ranks)."""
    if not is_active():
        return bool(value)
    t = _flag_tensor(value)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_flag(value: bool) -> bool:
    """Rank 0's ``value`` on every rank (a collective)."""
    if not is_active():
        return bool(value)
    t = _flag_tensor(value)
    dist.broadcast(t, src=0)
    return bool(t.item())


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank (a collective; no-op alone).

    DDP averages gradients, so parameters stay equal, but each rank updates its BatchNorm statistics
    from its own batches; before validating or saving, every rank takes rank 0's.
    """
    if not is_active():
        return
    for buf in model.buffers():
        if buf.is_floating_point() or buf.dtype in (torch.int64, torch.int32):
            dist.broadcast(buf.data, src=0)


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_active():
        dist.barrier()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (any other model as it is)."""
    return (
        model.module
        if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel)
        else model
    )


def state_digest(model: torch.nn.Module) -> str:
    """A short SHA-256 of the model's parameters and buffers (to compare replicas)."""
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(unwrap(model).state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
