"""Which records go into which optimiser step, micro-batch and process.

An epoch is planned as a list of *global* batches (the recipe's global batch size) from a seed
and the epoch number alone, so the plan does not depend on the number of processes: a run can
resume on a different world size, and one process with 4 accumulation steps sees exactly the
micro-batches that two processes with 2 steps each see. A global batch is cut into
world x accumulation micro-batches; micro-batch j goes to process j % world, slot j // world.

`group_by_modality_length` is the original LLaVA sampler's idea: global batches hold only
image samples or only text samples, and inside a global batch samples are sorted by length
before being cut into micro-batches, so each micro-batch pads little.
"""

from __future__ import annotations

import math

import numpy as np


def steps_per_epoch(num_records: int, global_batch: int) -> int:
    return math.ceil(num_records / global_batch)


def plan_epoch(num_records: int, global_batch: int, seed: int, epoch: int, *,
               lengths: np.ndarray | None = None, num_images: np.ndarray | None = None,
               group_by_modality_length: bool = False, length_group_size: int | None = None) -> list[list[int]]:
    """Global batches of record indices for one epoch (the last one may be short).

    With grouping, `length_group_size` records (a multiple of the global batch; default one
    global batch) are sorted by length together and cut into global batches, so that small
    global batches can also pad little.
    """
    rng = np.random.default_rng([seed, epoch])
    if not group_by_modality_length:
        order = rng.permutation(num_records)
        return [order[i:i + global_batch].tolist() for i in range(0, num_records, global_batch)]
    if lengths is None or num_images is None:
        raise ValueError("grouping by modality and length needs the records' lengths and image counts")
    group = global_batch if length_group_size is None else length_group_size
    if group < 1 or group % global_batch:
        raise ValueError(f"length_group_size {group} is not a positive multiple of the global batch {global_batch}")
    groups, leftovers = [], []
    for pool in (np.flatnonzero(num_images > 0), np.flatnonzero(num_images == 0)):
        pool = pool[rng.permutation(len(pool))]
        full = len(pool) // global_batch * global_batch
        for i in range(0, full, group):
            chunk = pool[i:min(i + group, full)]
            chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
            groups += [chunk[j:j + global_batch] for j in range(0, len(chunk), global_batch)]
        leftovers.append(pool[full:])
    groups = [groups[i] for i in rng.permutation(len(groups))]
    rest = np.concatenate(leftovers)  # the two modalities' remainders, mixed, at the very end
    groups += [rest[i:i + global_batch] for i in range(0, len(rest), global_batch)]
    # Longest first inside a global batch; a stable sort keeps the plan deterministic.
    return [g[np.argsort(-lengths[g], kind="stable")].tolist() for g in groups]


def split_global_batch(batch: list[int], micro_batch: int, world_size: int, accumulation: int,
                       rank: int) -> list[list[int]]:
    """This process's `accumulation` micro-batches of one global batch (some may be empty)."""
    chunks = [batch[i:i + micro_batch] for i in range(0, len(batch), micro_batch)]
    slots = world_size * accumulation
    if len(chunks) > slots:
        raise ValueError(f"a global batch of {len(batch)} does not fit {slots} micro-batches of {micro_batch}")
    chunks += [[] for _ in range(slots - len(chunks))]
    return [chunks[slot * world_size + rank] for slot in range(accumulation)]


def padding_fraction(micro_batches: list[list[int]], lengths: np.ndarray) -> float:
    """Padded positions / all positions when each micro-batch pads to its longest sample."""
    real = padded = 0
    for mb in micro_batches:
        if mb:
            ls = lengths[mb]
            real += int(ls.sum())
            padded += int(ls.max()) * len(mb)
    return 1.0 - real / padded if padded else 0.0
