"""A frozen vision tower's features, computed once and memory-mapped from disk.

The cache folder is named by a hash of everything that changes the features (preprocessing,
tower config and weights, feature layer, storage dtype); inside, each *part* is a
`features.npy` (memory-mapped [images, tokens, width]), a `status.npy` (per image: pending, ok,
missing, unreadable) and `paths.json`. Images are keyed by absolute path. A later run, another
epoch or another stage-1 run with the same tower reuses the rows it finds and adds a part for
images it does not. `preprocess(path)` returns the cached features, so the dataset hands them to
`prepare_sample` exactly where it would hand an image processor's pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from llavakit.images import ImageError
from llavakit.train.data import SkipSample

PENDING, OK, MISSING, UNREADABLE = 0, 1, 2, 3


def tower_fingerprint(model) -> str:
    """Hash of the tower's weights: a cache never outlives the tower it was made with."""
    h = hashlib.sha1()
    for name, p in sorted(model.vision_tower.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(model, image_processor, dtype: str) -> str:
    c = model.config
    settings = {"processor": image_processor.to_dict(), "vision": c.to_dict()["vision"],
                "layer": c.vision_feature_layer, "select": c.vision_feature_select, "dtype": dtype,
                "tower": tower_fingerprint(model)}
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], processor) -> None:
        self.paths, self.processor = paths, processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        if not os.path.isfile(path):
            return i, None, MISSING
        try:
            return i, self.processor.preprocess(path), OK
        except ImageError:
            return i, None, UNREADABLE


def _collate(items):
    return items


class FeatureCache:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._rows: dict[str, tuple[int, int]] = {}
        self._parts: list[Path] = []
        self._open: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.reload()

    def reload(self) -> None:
        self._parts = sorted(p for p in self.directory.glob("part-*") if (p / "paths.json").is_file())
        self._rows = {}
        for n, part in enumerate(self._parts):
            for row, path in enumerate(json.loads((part / "paths.json").read_text())):
                self._rows[path] = (n, row)
        self._open = {}

    def __getstate__(self) -> dict:  # memmaps are reopened in each DataLoader worker
        return {**self.__dict__, "_open": {}}

    def _arrays(self, part: int) -> tuple[np.ndarray, np.ndarray]:
        if part not in self._open:
            folder = self._parts[part]
            self._open[part] = (np.load(folder / "features.npy", mmap_mode="r"),
                                np.load(folder / "status.npy", mmap_mode="r"))
        return self._open[part]

    def status(self, path: str | Path) -> int:
        where = self._rows.get(os.path.abspath(path))
        return PENDING if where is None else int(self._arrays(where[0])[1][where[1]])

    def preprocess(self, path: str | Path) -> torch.Tensor:
        """Float32 [tokens, width] features of one image (the dataset's image-processor hook)."""
        key = os.path.abspath(path)
        where = self._rows.get(key)
        state = PENDING if where is None else int(self._arrays(where[0])[1][where[1]])
        if state == MISSING:
            raise SkipSample("missing_image", key)
        if state == UNREADABLE:
            raise SkipSample("unreadable_image", key)
        if state != OK:
            raise ImageError(f"{key}: not in the feature cache {self.directory}")
        features, _ = self._arrays(where[0])
        return torch.from_numpy(np.array(features[where[1]], dtype=np.float32))

    @torch.no_grad()
    def fill(self, paths: list[str], model, image_processor, *, dtype: str, batch_size: int, num_workers: int,
             rank: int = 0, world_size: int = 1, barrier=lambda: None, autocast=None, progress: bool = False) -> int:
        """Compute features of the images not cached yet; every process takes a share. Returns how many."""
        wanted = sorted({os.path.abspath(p) for p in paths})
        todo = [p for p in wanted if self.status(p) == PENDING]
        if not todo:
            return 0
        new_part = [p for p in todo if p not in self._rows]
        if new_part and rank == 0:
            folder = self.directory / f"part-{len(self._parts):04d}"
            folder.mkdir(parents=True, exist_ok=True)
            shape = (len(new_part), model.config.tokens_per_image, model.config.vision.hidden_size)
            np.lib.format.open_memmap(folder / "features.npy", "w+", np.dtype(dtype), shape).flush()
            np.lib.format.open_memmap(folder / "status.npy", "w+", np.int8, (len(new_part),)).flush()
            (folder / "paths.json.tmp").write_text(json.dumps(new_part))
            os.replace(folder / "paths.json.tmp", folder / "paths.json")  # the part exists once this is there
        barrier()
        self.reload()
        mine = todo[rank::world_size]
        loader = torch.utils.data.DataLoader(_ImageFiles(mine, image_processor), batch_size=batch_size,
                                             num_workers=num_workers, collate_fn=_collate)
        writable: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        from tqdm import tqdm

        for items in tqdm(loader, desc="caching tower features", disable=not progress, unit="batch"):
            good = [(i, px) for i, px, st in items if st == OK]
            if good:
                pixels = torch.stack([px for _, px in good])
                with autocast() if autocast else torch.autocast("cpu", enabled=False):
                    out = model.vision_features(pixels).float().cpu().numpy()
            position = {k: j for j, (k, _) in enumerate(good)}
            for i, _, st in items:
                part, row = self._rows[mine[i]]
                if part not in writable:
                    folder = self._parts[part]
                    writable[part] = (np.load(folder / "features.npy", mmap_mode="r+"),
                                      np.load(folder / "status.npy", mmap_mode="r+"))
                feats, status = writable[part]
                if st == OK:
                    feats[row] = out[position[i]]
                status[row] = st
        for feats, status in writable.values():
            feats.flush()
            status.flush()
        barrier()
        self.reload()
        return len(todo)
