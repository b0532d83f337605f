"""A linear probe of the tower's patch features: can each grid cell's object be read off them?

LLaVA feeds the projector the patch features of one inner layer (layer -2), not the contrastive
embedding, so the number that predicts how well LLaVA can learn colours, shapes and sizes is how
well a linear map recovers them from those patch features, cell by cell. The probe is trained
on training images and scored on held-out ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llavakit.model.vision import VisionTower
from llavakit.world.dataset import normalise
from llavakit.world.scenes import COLOURS, GRID, SHAPES, SIZES, Scene

ATTRIBUTES = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES)}


@torch.no_grad()
def cell_features(tower: VisionTower, pixels: torch.Tensor, layer: int = -2, batch_size: int = 256) -> torch.Tensor:
    """[N, 9, 4 * D]: for every grid cell, the features of the patches it covers, concatenated."""
    tower.eval()
    side = tower.config.image_size // tower.config.patch_size
    if side % GRID:
        raise ValueError(f"a {side} x {side} patch grid does not split into {GRID} x {GRID} cells")
    k = side // GRID
    out = []
    for i in range(0, len(pixels), batch_size):
        x = tower(normalise(pixels[i : i + batch_size]), layer=layer)
        x = x[:, 1:] if tower.config.has_class_token else x
        n, _, d = x.shape
        x = x.view(n, GRID, k, GRID, k, d).permute(0, 1, 3, 2, 4, 5).reshape(n, GRID * GRID, k * k * d)
        out.append(x)
    return torch.cat(out)


def cell_targets(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Per attribute, [N, 9] class ids, with the last class meaning "empty cell"."""
    targets = {}
    for name, values in ATTRIBUTES.items():
        t = torch.full((len(scenes), GRID * GRID), len(values), dtype=torch.long)
        for i, scene in enumerate(scenes):
            for o in scene.objects:
                t[i, o.cell] = values.index(getattr(o, name))
        targets[name] = t
    return targets


def linear_probe(tower: VisionTower, train_pixels: torch.Tensor, train_scenes: list[Scene],
                 test_pixels: torch.Tensor, test_scenes: list[Scene], ridge: float = 1.0) -> dict[str, float]:
    """Accuracy on occupied held-out cells, per attribute and for all three at once.

    The probe is a ridge-regression classifier onto one-hot targets: closed form, so it is fast
    and deterministic, and a lower bound on what a trained (nonlinear) projector can read.
    """
    x_train = cell_features(tower, train_pixels).flatten(0, 1).double()
    x_test = cell_features(tower, test_pixels).flatten(0, 1).double()
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    ones = torch.ones(len(x_train), 1, dtype=x_train.dtype)
    x_train = torch.cat([x_train, ones], 1)
    x_test = torch.cat([x_test, torch.ones(len(x_test), 1, dtype=x_test.dtype)], 1)
    gram = x_train.T @ x_train + ridge * torch.eye(x_train.shape[1], dtype=x_train.dtype)
    y_train = {k: v.flatten() for k, v in cell_targets(train_scenes).items()}
    y_test = {k: v.flatten() for k, v in cell_targets(test_scenes).items()}
    occupied = y_test["size"] != len(SIZES)
    correct = torch.ones_like(occupied)
    metrics: dict[str, float] = {}
    for name, values in ATTRIBUTES.items():
        onehot = F.one_hot(y_train[name], len(values) + 1).to(x_train.dtype)
        weight = torch.linalg.solve(gram, x_train.T @ onehot)
        hit = (x_test @ weight).argmax(-1) == y_test[name]
        metrics[name] = float(hit[occupied].float().mean())
        correct &= hit
    metrics["all"] = float(correct[occupied].float().mean())
    metrics["empty_cells"] = float(correct[~occupied].float().mean())
    return metrics
