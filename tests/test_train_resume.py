"""Kill -9 a training run after it wrote a checkpoint, resume it, and get the same bits.

All three runs are subprocesses with one thread, so they do the same arithmetic in the same
order. LoRA dropout makes the result depend on the restored RNG, the cosine schedule with
warm-up on the restored step, AdamW on the restored moments, and the data order on the
restored position.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file
from test_train_fixtures import chat_records, write_images, write_json

RECIPE = """\
base: llava-v1.5-7b-lora
model: {{init: {model}, projector_from: null}}
data: {{path: {data}, image_folder: {images}, num_workers: 0, max_length: 256}}
train: {{precision: fp32, device: cpu, gradient_checkpointing: false, warmup_ratio: 0.2,
         global_batch_size: 8, micro_batch_size: 4, lr: 1.0e-2, projector_lr: 1.0e-3, epochs: 4}}
lora: {{r: 4, alpha: 8, dropout: 0.2}}
output: {{progress: false, save_every: 3, keep_last: 2}}
"""


def _cli(*args: str, slow: bool = False) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if slow:
        env["LLAVAKIT_STEP_SLEEP"] = "0.5"
    return subprocess.Popen([sys.executable, "-m", "llavakit.cli", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(p: subprocess.Popen) -> str:
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out
    return out


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_checkpoint):
    names = write_images(tmp_path / "images", 12)
    data = write_json(tmp_path / "chat.jsonl", chat_records(names, 4), jsonl=True)  # 16 records: 2 steps/epoch
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(model=tiny_checkpoint, data=data, images=tmp_path / "images"))
    whole, broken = tmp_path / "whole", tmp_path / "broken"

    uninterrupted = _cli(str(recipe), f"output.dir={whole}")
    victim = _cli(str(recipe), f"output.dir={broken}", slow=True)
    # Watch the victim from its start: waiting for the other run first could let it finish unkilled.
    target = broken / "checkpoints" / "step-00000006"
    deadline = time.monotonic() + 90
    while not target.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert target.exists(), victim.communicate()[0]
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    _finish(uninterrupted)
    assert not (broken / "train_summary.json").exists()
    # Only complete checkpoints are named step-*; --resume takes the newest.
    assert {p.name for p in (broken / "checkpoints").iterdir()} == {"step-00000003", "step-00000006"}

    out = _finish(_cli(str(recipe), f"output.dir={broken}", "--resume"))
    assert "steps: 8" in out
    for name in ("adapter_model.safetensors", "non_lora_trainables.safetensors"):
        a, b = load_file(whole / name), load_file(broken / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    def steps(folder):
        return [(r["step"], r["loss"]) for r in map(json.loads, (folder / "log.jsonl").read_text().splitlines())
                if r["event"] == "step"]

    assert steps(broken) == steps(whole) and [s for s, _ in steps(whole)] == list(range(1, 9))
