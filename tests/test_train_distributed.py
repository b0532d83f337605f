"""Two CPU processes on gloo (real torchrun) reach the loss of one process with the same global batch.

DDP (with the feature cache filled by both processes) and FSDP are checked against an in-process
single-process run; FSDP's sharded checkpoint is then resumed on one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file
from test_train_fixtures import chat_records, write_images, write_json

from llavakit.train import load_recipe, train

RECIPE = """\
base: llava-v1.5-7b-finetune
model: {{init: {model}, projector_from: null}}
data: {{path: {data}, image_folder: {images}, num_workers: 0, max_length: 256}}
train: {{precision: fp32, device: cpu, gradient_checkpointing: false, warmup_ratio: 0,
         global_batch_size: 8, micro_batch_size: 2, lr: 3.0e-3, epochs: 2}}
cache: {{dtype: float32}}
output: {{progress: false, save_every: 4, keep_last: 3}}
"""
LOSS_TOL = 1e-5  # relative, per step: only the order of float sums differs
WEIGHT_TOL = 1e-5  # absolute, final weights (values of order 0.1-1)


def _torchrun(recipe, *overrides: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "llavakit.cli", "train", str(recipe), *overrides]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def _steps(folder):
    return [r["loss"] for r in map(json.loads, (folder / "log.jsonl").read_text().splitlines()) if r["event"] == "step"]


def _max_diff(a_dir, b_dir) -> float:
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("dist")
    names = write_images(root / "images", 20)
    data = write_json(root / "chat.jsonl", chat_records(names, 12), jsonl=True)  # 32 records: 4 steps/epoch
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE.format(model=tiny_checkpoint, data=data, images=root / "images"))
    single = root / "single"
    summary = train(load_recipe(recipe, [f"output.dir={single}"]))
    assert summary["strategy"] == "single" and summary["steps"] == 8
    return root, recipe, single


def test_ddp_on_two_processes_matches_one_process(setup):
    root, recipe, single = setup
    out = root / "ddp"
    _torchrun(recipe, f"output.dir={out}", "distributed.strategy=ddp", "cache.features=true",
              f"cache.dir={root / 'cache'}")
    summary = json.loads((out / "train_summary.json").read_text())
    assert (summary["world_size"], summary["strategy"]) == (2, "ddp")
    assert _steps(out) == pytest.approx(_steps(single), rel=LOSS_TOL)
    assert _max_diff(single, out) < WEIGHT_TOL
    assert len(json.loads(next((root / "cache").glob("*/part-*/paths.json")).read_text())) == 20


def test_fsdp_on_two_processes_matches_and_its_checkpoint_resumes_on_one(setup):
    root, recipe, single = setup
    out = root / "fsdp"
    _torchrun(recipe, f"output.dir={out}", "distributed.strategy=fsdp")
    assert json.loads((out / "train_summary.json").read_text())["strategy"] == "fsdp"
    assert _steps(out) == pytest.approx(_steps(single), rel=LOSS_TOL)
    assert _max_diff(single, out) < WEIGHT_TOL
    shards = sorted(p.name for p in (out / "checkpoints" / "step-00000004" / "state").glob("*.distcp"))
    assert len(shards) == 2  # one file per process
    resumed = root / "resumed"
    train(load_recipe(recipe, [f"output.dir={resumed}"]), resume=str(out / "checkpoints" / "step-00000004"))
    assert _steps(resumed)[-4:] == pytest.approx(_steps(single)[-4:], rel=LOSS_TOL)
    assert _max_diff(single, resumed) < WEIGHT_TOL
