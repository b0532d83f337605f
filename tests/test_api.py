"""The Python API on a real checkpoint folder: load, ask, batch, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import llavakit
from llavakit import ImageError, Message


@pytest.fixture(scope="module")
def llava(tiny_checkpoint):
    return llavakit.load(tiny_checkpoint, device="auto")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))


def test_load_picks_cpu_fp32_and_the_recorded_template(llava):
    assert llava.model.device.type == "cpu"  # no GPU here: auto falls back to the CPU
    assert llava.model.dtype == torch.float32
    assert llava.template.name == "vicuna_v1"
    assert llava.image_processor.aspect == "pad"


def test_ask_matches_the_model_level_generate(llava, image):
    answer = llava.ask(image, "What is in the picture?", max_new_tokens=8)
    batch = llava.prepare([[Message("user", "<image>\nWhat is in the picture?")]], [[image]])
    prompt = llava.tokenizer.decode(batch.input_ids[0][batch.input_ids[0] >= 0])
    assert prompt.startswith("<s> " + llava.template.system + " USER:")
    assert prompt.rstrip().endswith("ASSISTANT:")
    tokens = llava.model.generate(batch.input_ids, batch.pixel_values, max_new_tokens=8,
                                  eos_token_ids=llava.eos_token_ids())[0]
    assert answer == llava.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def test_batch_of_mixed_conversations_equals_one_at_a_time(llava, image):
    conversations = [
        [{"role": "user", "content": "Describe it."}],
        [{"role": "user", "content": "<image>\nWhat colour is it?"}],
        [{"role": "user", "content": "<image>\n<image>\nCompare these."}],
    ]
    images = [[], [image], [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]]
    batched = llava.generate(conversations, images, max_new_tokens=6)
    alone = [llava.generate([c], [i], max_new_tokens=6)[0] for c, i in zip(conversations, images)]
    assert batched == alone


def test_seeded_sampling_reproduces(llava, image):
    first = llava.ask(image, "Hi", temperature=1.0, top_p=0.9, seed=7, max_new_tokens=8)
    again = llava.ask(image, "Hi", temperature=1.0, top_p=0.9, seed=7, max_new_tokens=8)
    assert first == again


def test_placeholder_count_must_match_images(llava, image):
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 images"):
        llava.generate([[{"role": "user", "content": "<image> and <image>"}]], [[image]])


def test_bad_image_raises_image_error_naming_it(llava, tmp_path):
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    with pytest.raises(ImageError, match="not-an-image.png"):
        llava.ask(bad, "What is this?")


def test_unknown_dtype_and_device_names_are_clear(tiny_checkpoint):
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        llavakit.load(tiny_checkpoint, dtype="float8")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        llavakit.load(tiny_checkpoint, device="gpu0")


def test_save_and_reload_gives_the_same_answers(llava, image, tmp_path):
    llava.save(tmp_path / "copy")
    again = llavakit.load(tmp_path / "copy")
    assert again.ask(image, "What is it?", max_new_tokens=6) == llava.ask(image, "What is it?", max_new_tokens=6)
