"""One process, or many under torchrun: process groups, gradient sync, sharding, checkpoints.

Two strategies. "ddp" keeps a full replica per process and sums gradients with bucketed
all-reduces after the accumulation steps (no hooks: text-only micro-batches, which leave the
projector without a gradient, need no special care). "fsdp" shards parameters, gradients and
optimizer states with FSDP2 (`fully_shard` per decoder and vision layer, then the root).
Training checkpoints use torch.distributed.checkpoint, so they load on any number of processes.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from llavakit.devices import resolve_device


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    strategy: str = "single"  # single | ddp | fsdp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce(self, values: list[float]) -> list[float]:
        """Sum a few numbers over processes (float64 on the CPU side, exact for counts)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        return t.tolist()

    def all_gather_object(self, obj):
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def init_distributed(device: str = "auto", backend: str = "auto") -> DistContext:
    """Join torchrun's process group when WORLD_SIZE > 1; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        chosen = backend if backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(chosen, device_id=dev if dev.type == "cuda" else None)
    return DistContext(rank, world, local_rank, dev, "single" if world == 1 else "ddp")


def close_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def choose_strategy(ctx: DistContext, requested: str, num_parameters: int) -> str:
    if not ctx.distributed:
        return "single"
    if requested == "auto":
        return "fsdp" if num_parameters >= 1_000_000_000 else "ddp"
    return requested


@torch.no_grad()
def broadcast_parameters(module: nn.Module, ctx: DistContext) -> None:
    """Rank 0's trainable weights everywhere (replicas must start equal)."""
    if ctx.strategy != "ddp":
        return
    for p in module.parameters():
        if p.requires_grad:
            dist.broadcast(p.data, src=0)


@torch.no_grad()
def sync_gradients(params: list[nn.Parameter], ctx: DistContext, bucket_elements: int = 1 << 24) -> None:
    """Sum gradients over processes (missing gradients count as zeros), in flat buckets."""
    if ctx.strategy != "ddp":
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[nn.Parameter] = []
    size = 0
    for p in [*params, None]:
        if p is not None and (not bucket or (size + p.numel() <= bucket_elements and p.dtype == bucket[0].dtype)):
            bucket.append(p)
            size += p.numel()
            continue
        if bucket:
            flat = torch.cat([q.grad.reshape(-1) for q in bucket])
            dist.all_reduce(flat)
            offset = 0
            for q in bucket:
                q.grad.copy_(flat[offset:offset + q.numel()].view_as(q.grad))
                offset += q.numel()
        bucket, size = ([p], p.numel()) if p is not None else ([], 0)


def shard_fsdp(root: nn.Module, model, compute_dtype: torch.dtype | None) -> None:
    """FSDP2: one unit per decoder layer and vision layer, the rest in the root unit."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) if compute_dtype else None
    kwargs = {"mp_policy": policy} if policy else {}
    for layer in model.vision_tower.encoder.layers:
        fully_shard(layer, **kwargs)
    for layer in model.language_model.model.layers:
        fully_shard(layer, **kwargs)
    fully_shard(root, **kwargs)


def _state_options(full: bool = False, strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, full_state_dict=full, cpu_offload=full, strict=strict)


@contextmanager
def _quiet_single_process():
    """DCP warns that it "assumes" a single process when there is no process group: that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_sharded(directory: str, root: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Trainable weights and optimizer states, each process writing its shard (any world size can load it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(root, optimizer, options=_state_options())
    with _quiet_single_process():
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=directory)


def load_sharded(directory: str, root: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(root, optimizer, options=_state_options())
    state = {"model": model_state, "optim": optim_state}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=directory)
    # Not strict: the frozen weights are not in a checkpoint (dcp.load above already failed if a
    # trainable one was missing).
    set_state_dict(root, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_state_options(strict=False))


def full_state(root: nn.Module, ctx: DistContext) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, unsharded, on the CPU (on rank 0; other ranks get {}).

    Under FSDP each shard is sent to rank 0 with one plain, synchronous gather per tensor, so
    only rank 0 ever holds the whole model. torch.distributed.checkpoint's full-state gather
    (DTensor redistribute on functional collectives, with cpu_offload) corrupted the heap on
    gloo now and then in CI ("malloc(): unaligned tcache chunk detected"), so it is not used.
    """
    if ctx.strategy != "fsdp":
        return {k: v.detach().cpu() for k, v in root.state_dict().items()} if ctx.is_main else {}
    full = {k: _unshard(v, ctx.is_main) for k, v in root.state_dict().items()}
    return full if ctx.is_main else {}


@torch.no_grad()
def _unshard(tensor: torch.Tensor, is_main: bool) -> torch.Tensor | None:
    """On rank 0, the whole tensor of an FSDP2 shard (Shard(0): torch.chunk pieces, the last
    ones shorter); None elsewhere."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(tensor, DTensor):
        return tensor.detach().cpu() if is_main else None
    if tuple(tensor.placements) != (Shard(0),):
        raise RuntimeError(f"cannot gather a parameter placed as {tensor.placements}; expected Shard(0)")
    group = tensor.device_mesh.get_group()
    world = dist.get_world_size(group)
    local = tensor.to_local().detach()
    rows = tensor.shape[0]
    chunk = -(-rows // world)
    padded = torch.zeros((chunk, *tensor.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]].copy_(local)
    pieces = [torch.empty_like(padded) for _ in range(world)] if is_main else None
    dist.gather(padded, pieces, dst=dist.get_global_rank(group, 0), group=group)
    return torch.cat(pieces)[:rows].cpu() if is_main else None
