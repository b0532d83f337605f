"""Training data: lazy JSON/JSONL indexing, skipped records by reason, exact labels, samplers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_train_fixtures import caption_records, chat_records, tiny_recipe, write_images, write_json

from llavakit.api import image_processor_for, load_tokenizer
from llavakit.config import LlavaConfig
from llavakit.conversation import from_llava_conversations, get_template, normalise_image_placeholders
from llavakit.tokenize import IGNORE_INDEX, encode
from llavakit.train import train
from llavakit.train.data import LlavaDataset, _scan_json_array, index_records
from llavakit.train.sampler import padding_fraction, plan_epoch, split_global_batch
from llavakit.train.step import LossModule


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    return folder, write_images(folder, 16)


def _dataset(checkpoint, path, folder, template="vicuna_v1", **kw):
    config = LlavaConfig.load(checkpoint / "config.json")
    tokenizer = load_tokenizer(checkpoint)
    return LlavaDataset(path, config=config, template=get_template(template), tokenizer=tokenizer,
                        image_processor=image_processor_for(config), image_folder=folder, **kw)


def test_json_and_jsonl_index_the_same_records_lazily(tmp_path, images, tiny_checkpoint):
    folder, names = images
    records = chat_records(names[:6], 3)
    records[0]["conversations"][1]["value"] = "Ünïcödé — 猫 and emoji 🐱 in the answer."
    records[1]["image"] = ["nowhere.png", names[1]]  # a list of images; one missing (not read yet)
    as_json = write_json(tmp_path / "d.json", records)
    as_jsonl = write_json(tmp_path / "d.jsonl", records, jsonl=True)
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + as_json.read_bytes())
    for path in (as_json, as_jsonl, bom):
        ds = _dataset(tiny_checkpoint, path, folder)  # indexing opens no image: the missing one is no error
        assert len(ds) == len(records)
        assert [ds.record(i) for i in range(len(ds))] == records
        assert list(ds.index.num_images) == [len(r["image"]) if isinstance(r.get("image"), list) else int("image" in r)
                                             for r in records]
    # The index is offsets and small arrays, not parsed records.
    index = index_records(as_json, estimate="words")
    assert index.offsets.dtype == np.int64 and not hasattr(index, "records")
    # Streaming through tiny chunks (records and multi-byte characters split across reads) finds the same.
    with open(as_json, "rb") as f:
        found = list(_scan_json_array(f, chunk=7))
    raw = as_json.read_bytes()
    assert [r for _, _, r in found] == records
    assert [json.loads(raw[o:o + n]) for o, n, _ in found] == records


def test_token_length_estimates_ignore_the_tokenizers_last_truncation(tmp_path, images, tiny_checkpoint):
    # The index counts tokens through the tokenizer's Rust backend, which keeps the truncation of
    # the last call that asked for it; the counts must be the tokenizer's own.
    folder, names = images
    path = write_json(tmp_path / "d.json", chat_records(names[:6], 3))
    tokenizer = load_tokenizer(tiny_checkpoint)
    config = LlavaConfig.load(tiny_checkpoint / "config.json")
    expected = index_records(path, tokenizer=tokenizer, tokens_per_image=config.tokens_per_image).lengths
    texts = [" ".join(t["value"].replace("<image>", "") for t in r["conversations"]) for r in json.loads(path.read_text())]
    assert min(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts) > 3
    tokenizer(texts, truncation=True, max_length=3)
    again = index_records(path, tokenizer=tokenizer, tokens_per_image=config.tokens_per_image).lengths
    assert again.tolist() == expected.tolist()


def test_bad_records_are_skipped_and_counted_by_reason(tmp_path, images, tiny_checkpoint):
    folder, names = images
    (folder / "broken.png").write_bytes(b"this is not a png")
    good = chat_records(names[:8], 4)
    q, a = {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}
    long_text = " ".join(["the dog is sitting on the table."] * 60)
    bad = [
        {"id": "role", "image": names[0], "conversations": [q, {"from": "bot", "value": "hi"}]},
        {"id": "tags", "image": names[0], "conversations": [{"from": "human", "value": "<image> <image> two?"}, a]},
        {"id": "missing", "image": "no-such-file.png", "conversations": [q, a]},
        {"id": "unreadable", "image": "broken.png", "conversations": [q, a]},
        {"id": "order", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
        {"id": "targets", "conversations": [{"from": "human", "value": "only a question"}]},
        {"id": "noconv", "image": names[0]},
        # The second image comes after max_length: cutting would split it, so it is skipped ...
        {"id": "long-image", "image": [names[0], names[1]], "conversations": [
            q, {"from": "gpt", "value": long_text}, {"from": "human", "value": "<image>\nAnd this?"}, a]},
        # ... while a long text-only answer is truncated and kept.
        {"id": "truncated", "conversations": [{"from": "human", "value": "Tell me."}, {"from": "gpt", "value": long_text}]},
    ]
    lines = [json.dumps(r) for r in good + bad] + ["{not json"]
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(lines) + "\n")
    recipe = tiny_recipe(tiny_checkpoint, data, tmp_path / "out", f"data.image_folder={folder}", "data.max_length=300",
                         "train.global_batch_size=8", "train.micro_batch_size=2")
    summary = train(recipe)
    assert summary["skipped"] == {"unknown_role": 1, "image_tag_mismatch": 1, "missing_image": 1,
                                  "unreadable_image": 1, "bad_conversation": 1, "no_targets": 1,
                                  "bad_record": 2, "too_long": 1}
    assert summary["truncated"] == 1 and summary["records"] == len(lines)
    end = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()][-1]
    assert end["event"] == "end" and end["skipped"] == summary["skipped"] and "no-such-file.png" in str(end)
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_the_loop_trains_on_exactly_the_assistant_tokens(tmp_path, images, tiny_checkpoint, monkeypatch):
    folder, names = images
    records = chat_records(names[:6], 4) + [{"id": "two", "image": [names[6], names[7]], "conversations": [
        {"from": "human", "value": "<image>\n<image>\nCompare the two pictures."},
        {"from": "gpt", "value": "The first is darker."}, {"from": "human", "value": "Why?"},
        {"from": "gpt", "value": "Less light."}]}]
    data = write_json(tmp_path / "chat.json", records)
    seen = []
    original = LossModule.forward

    def spy(self, input_ids, attention_mask, labels, *args, **kwargs):
        for ids, mask, lab in zip(input_ids, attention_mask, labels):
            n = int(mask.sum())
            assert mask[:n].all() and not mask[n:].any()  # right padding
            assert (lab[n:] == IGNORE_INDEX).all()
            seen.append((ids[:n].tolist(), lab[:n].tolist()))
        return original(self, input_ids, attention_mask, labels, *args, **kwargs)

    monkeypatch.setattr(LossModule, "forward", spy)
    train(tiny_recipe(tiny_checkpoint, data, tmp_path / "out", f"data.image_folder={folder}", "train.max_steps=2"))
    config = LlavaConfig.load(tiny_checkpoint / "config.json")
    tokenizer = load_tokenizer(tiny_checkpoint)
    template = get_template("vicuna_v1")
    expected = {}
    for r in records:
        messages = normalise_image_placeholders(from_llava_conversations(r["conversations"]))
        rendered = template.render(messages, add_generation_prompt=False)
        enc = encode(rendered, tokenizer, image_token_id=config.image_token_id,
                     tokens_per_image=config.tokens_per_image, with_labels=True)
        answers = "".join(t for t in rendered.target_texts())
        targets = [t for t in enc.labels if t != IGNORE_INDEX]
        assert tokenizer.decode(targets).replace(" ", "") == answers.replace(" ", "")
        expected[tuple(enc.input_ids)] = enc.labels
    assert len(seen) == len(records)  # one epoch: two steps (8 + 3 records)
    for ids, labels in seen:
        assert labels == expected[tuple(ids)]


def test_length_grouping_keeps_modalities_apart_and_pads_little(tmp_path, images, tiny_checkpoint):
    folder, names = images
    data = write_json(tmp_path / "chat.json", chat_records(names, 24) + caption_records(names))
    ds = _dataset(tiny_checkpoint, data, folder)
    lengths, n_images = ds.index.lengths, ds.index.num_images
    grouped = plan_epoch(len(ds), 8, 0, 0, lengths=lengths, num_images=n_images, group_by_modality_length=True)
    plain = plan_epoch(len(ds), 8, 0, 0)
    assert sorted(i for b in grouped for i in b) == list(range(len(ds))) == sorted(i for b in plain for i in b)
    mixed = [b for b in grouped if len({bool(n_images[i]) for i in b}) > 1]
    assert len(mixed) <= 1 and (not mixed or mixed[0] is grouped[-1])  # only the leftovers mix
    def micro(plan):
        return [mb for b in plan for mb in split_global_batch(b, 2, 1, 4, 0)]
    assert padding_fraction(micro(grouped), lengths) < padding_fraction(micro(plain), lengths)
    # Estimated lengths follow the real ones closely enough to sort by.
    real = [len(ds[i].sample.input_ids) for i in range(len(ds))]
    assert np.corrcoef(real, lengths)[0, 1] > 0.95
    assert plan_epoch(len(ds), 8, 0, 1) != plain  # a new order every epoch, from (seed, epoch) alone
    assert plan_epoch(len(ds), 8, 0, 0) == plain


def test_length_groups_larger_than_a_batch_pad_small_batches_less():
    rng = np.random.default_rng(3)
    n = 2000
    lengths, n_images = rng.integers(20, 300, size=n), (rng.random(n) < 0.8).astype(int)
    one = plan_epoch(n, 8, 0, 0, lengths=lengths, num_images=n_images, group_by_modality_length=True)
    # One global batch per group is the plain grouping, record for record.
    assert plan_epoch(n, 8, 0, 0, lengths=lengths, num_images=n_images, group_by_modality_length=True,
                      length_group_size=8) == one
    wide = plan_epoch(n, 8, 0, 0, lengths=lengths, num_images=n_images, group_by_modality_length=True,
                      length_group_size=256)
    assert sorted(i for b in wide for i in b) == list(range(n)) and all(len(b) <= 8 for b in wide)
    assert [len({bool(n_images[i]) for i in b}) for b in wide[:-1]].count(2) == 0
    assert padding_fraction(wide, lengths) < 0.1 < 0.3 < padding_fraction(one, lengths)
    # Short and long global batches alternate at random, not in the order they were cut.
    firsts = [int(lengths[b[0]]) for b in wide[:40]]
    assert firsts != sorted(firsts, reverse=True)
    for bad in (12, 0):
        with pytest.raises(ValueError, match="not a positive multiple of the global batch"):
            plan_epoch(n, 8, 0, 0, lengths=lengths, num_images=n_images, group_by_modality_length=True,
                       length_group_size=bad)


def test_a_shared_system_prompt_runs_once_with_the_same_loss_and_gradients(tmp_path, images, tiny_checkpoint):
    from llavakit.api import load
    from llavakit.train.data import Collator
    from llavakit.train.step import shared_prefix_length

    folder, names = images
    ds = _dataset(tiny_checkpoint, write_json(tmp_path / "d.json", chat_records(names[:6], 2)), folder)
    batch = Collator(0)([ds[i] for i in range(len(ds))]).batch
    system_tokens = len(load_tokenizer(tiny_checkpoint)(get_template("vicuna_v1").system + " USER:").input_ids)
    shared = shared_prefix_length(batch.input_ids, batch.labels, batch.attention_mask, ds.config.image_token_id)
    assert system_tokens - 2 <= shared < int(batch.attention_mask.sum(1).min())
    model = load(tiny_checkpoint, dtype=torch.float32, device="cpu").model.train()
    results = []
    for share in (False, True):
        model.zero_grad()
        loss = LossModule(model, tower_trainable=False, features_cached=False, share_prefix=share)(
            batch.input_ids, batch.attention_mask, batch.labels, batch.pixel_values)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (plain, plain_grads), (shared_loss, shared_grads) = results
    torch.testing.assert_close(shared_loss, plain, rtol=1e-5, atol=1e-5)
    assert plain_grads.keys() == shared_grads.keys() and len(plain_grads) > 10
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # nothing to share: one row, or rows that differ from their first token
    image_token = ds.config.image_token_id
    assert shared_prefix_length(batch.input_ids[:1], batch.labels[:1], batch.attention_mask[:1], image_token) == 0
    other = batch.input_ids.clone()
    other[1, 1] += 1
    assert shared_prefix_length(other, batch.labels, batch.attention_mask, image_token) == 0
