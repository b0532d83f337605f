"""The generation engine: batching equals one-at-a-time equals the reference loop, continuous
batching, cancel and queue limits, streaming, sampling, stop strings, int8."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import llavakit
from llavakit.engine import (
    Engine,
    FeatureCache,
    IncrementalDetokenizer,
    QueueFull,
    Request,
    SamplingParams,
    TextStream,
    quantize_model,
)
from llavakit.engine.sampling import apply_repetition_penalty, filter_top_k_top_p


@pytest.fixture(scope="module")
def llava(tiny_checkpoint):
    """The tiny checkpoint with livelier decoder weights, so answers depend on the prompt.

    The head rows of special and byte-fallback tokens are zeroed: greedy answers then never end
    early and are valid text, which keeps the comparisons below exact and their lengths fixed.
    """
    model = llavakit.load(tiny_checkpoint, dtype="fp32", device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.model.language_model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        tokens = model.tokenizer.convert_ids_to_tokens(list(range(len(model.tokenizer))))
        dead = [i for i, t in enumerate(tokens) if i < 3 or t.startswith("<0x")]
        model.model.language_model.lm_head.weight[dead] = 0
    return model


def picture(seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((30, 40, 3)) * 255).astype("uint8"))


def mixed_requests(**params) -> list[Request]:
    params.setdefault("max_new_tokens", 12)
    return [
        Request.question("What is the dog doing?", [picture(1)], **params),
        Request.question("Hi", [], **params),
        Request.question("<image> and <image>: which one shows the red car next to the river?",
                         [picture(2), picture(3)], **params),
        Request.question("Describe the old house in the morning, please, with many words.", [], **params),
    ]


@pytest.fixture
def engine(llava):
    with Engine(llava, max_batch_size=4) as e:
        yield e


def test_batch_equals_alone_equals_reference(llava, engine):
    requests = mixed_requests()
    batched = engine.generate(requests)
    alone = [engine.generate([r])[0] for r in requests]
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    assert len({tuple(r.token_ids) for r in batched}) == len(requests)  # the prompts matter
    for request, result in zip(requests, batched):
        batch = llava.prepare([request.messages], [request.images])
        reference = llava.model.generate(batch.input_ids, batch.pixel_values, max_new_tokens=12,
                                         eos_token_ids=llava.eos_token_ids())
        assert result.token_ids == reference[0]
        text = llava.generate([request.messages], [request.images], max_new_tokens=12)[0]
        assert result.text.strip() == text
        assert result.finish_reason == "length" and result.completion_tokens == 12
        assert result.prompt_tokens == batch.input_ids.shape[1]


def test_continuous_batching_matches_alone(llava):
    requests = mixed_requests(max_new_tokens=10)
    with Engine(llava, max_batch_size=2) as engine:
        expected = [engine.generate([r])[0].token_ids for r in requests]
        long = engine.submit(Request.question("Hi", [], max_new_tokens=150))
        next(iter(long))  # it is running now
        handles = [engine.submit(r) for r in requests]  # join (and leave) the running batch
        assert not long.done  # they really joined a running batch
        assert [h.result(timeout=30).token_ids for h in handles] == expected
        assert long.result(timeout=30).token_ids[:10] == engine.generate(
            [Request.question("Hi", [], max_new_tokens=10)])[0].token_ids


def test_cancel_frees_the_slot_and_queue_full(llava):
    with Engine(llava, max_batch_size=1, max_queue=1) as engine:
        first = engine.submit(Request.question("Hi", [], max_new_tokens=200))
        next(iter(first))  # admitted: the only slot is taken
        waiting = engine.submit(Request.question("Hi there", [], max_new_tokens=5))
        with pytest.raises(QueueFull):
            engine.submit(Request.question("one too many", []))
        first.cancel()
        result = first.result(timeout=30)
        assert result.finish_reason == "cancelled" and result.completion_tokens < 200
        assert waiting.result(timeout=30).completion_tokens == 5  # got the freed slot
        queued = engine.submit(Request.question("again", [], max_new_tokens=3))  # the queue has room again
        assert queued.result(timeout=30).finish_reason == "length"


def test_cancel_while_waiting(llava):
    with Engine(llava, max_batch_size=1, max_queue=4) as engine:
        first = engine.submit(Request.question("Hi", [], max_new_tokens=100))
        next(iter(first))
        waiting = engine.submit(Request.question("Hi there", [], max_new_tokens=5))
        waiting.cancel()
        assert waiting.result(timeout=5).finish_reason == "cancelled"
        first.cancel()


def test_streaming_concatenates_to_the_result(engine):
    request = Request.question("What is the dog doing?", [picture(1)], max_new_tokens=20)
    handle = engine.submit(request)
    deltas = list(handle)
    assert len(deltas) > 1 and "".join(deltas) == handle.result().text

    async def consume():
        h = engine.submit(request)
        return [d async for d in h], (await h.aresult()).text

    async_deltas, text = asyncio.run(consume())
    assert "".join(async_deltas) == text == handle.result().text
    assert "".join(engine.stream(request)) == text


def test_detokenizer_never_splits_multibyte_characters(llava):
    tok = llava.tokenizer
    text = "é中 the dog 😀 is sitting"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert sum(t.startswith("<0x") for t in tok.convert_ids_to_tokens(ids)) >= 9  # byte fallback at work
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.push(i) for i in ids]
    deltas.append(detok.flush())
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tok.decode(ids) == text
    assert deltas[1] == ""  # the first byte of "é" alone yields nothing


def test_stop_string_spanning_tokens_cuts_exactly(llava, engine):
    tok = llava.tokenizer
    ids = tok("the dog is sitting on the bench", add_special_tokens=False)["input_ids"]
    stream = TextStream(tok, stop=["g is s"])
    out = ""
    for i in ids:
        out += stream.push(i)
        if stream.stopped:
            break
    out += stream.finish()
    assert out == "the do" and stream.stopped

    request = mixed_requests(max_new_tokens=16)[0]
    full = engine.generate([request])[0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert len(stop) == 3
    cut = engine.generate([Request(messages=request.messages, images=request.images,
                                   params=SamplingParams(max_new_tokens=16, stop=(stop,)))])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]


def test_seeded_sampling_reproduces_alone_and_in_a_batch(engine):
    sampled = Request.question("What is the dog doing?", [picture(1)], max_new_tokens=16,
                               temperature=1.0, top_p=0.95, seed=123)
    alone = engine.generate([sampled])[0].token_ids
    assert engine.generate([sampled])[0].token_ids == alone
    others = mixed_requests(temperature=0.8, seed=7)
    in_batch = engine.generate([others[0], sampled, others[1], others[2]])
    assert in_batch[1].token_ids == alone
    other_seed = Request.question("What is the dog doing?", [picture(1)], max_new_tokens=16,
                                  temperature=1.0, top_p=0.95, seed=124)
    assert engine.generate([other_seed])[0].token_ids != alone


def test_top_k_one_is_greedy(engine):
    greedy = engine.generate(mixed_requests())
    top1 = engine.generate(mixed_requests(temperature=1.5, top_k=1, seed=3))
    assert [r.token_ids for r in top1] == [r.token_ids for r in greedy]


def test_repetition_penalty_definition_and_effect(engine):
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, -4.0])
    out = apply_repetition_penalty(logits.clone(), [0, 1, 1, -200], 2.0)
    assert torch.equal(out, torch.tensor([1.0, -2.0, 0.5, 3.0, -4.0]))
    filtered = filter_top_k_top_p(torch.tensor([3.0, 1.0, 2.0, 0.0]), 2, 1.0)
    assert torch.isinf(filtered[[1, 3]]).all() and torch.isfinite(filtered[[0, 2]]).all()
    nucleus = filter_top_k_top_p(torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])), 0, 0.7)
    assert torch.isfinite(nucleus[:2]).all() and torch.isinf(nucleus[2:]).all()
    plain = engine.generate(mixed_requests(max_new_tokens=24))
    penalised = engine.generate(mixed_requests(max_new_tokens=24, repetition_penalty=3.0))
    assert [r.token_ids for r in plain] != [r.token_ids for r in penalised]
    # Each answer repeats its tokens less (or no more) with the penalty.
    for a, b in zip(plain, penalised):
        assert len(set(b.token_ids)) >= len(set(a.token_ids)) - 1


def test_shared_images_are_encoded_once(llava):
    calls = []
    original = llava.model.encode_images

    def counting(pixels):
        calls.append(pixels.shape[0])
        return original(pixels)

    with Engine(llava, max_batch_size=4) as engine:
        llava.model.encode_images = counting
        try:
            same = [Request.question(q, [picture(5)], max_new_tokens=2) for q in ("a", "b", "c")]
            engine.generate(same)
            engine.generate([Request.question("<image><image>", [picture(5), picture(6)], max_new_tokens=2)])
        finally:
            del llava.model.encode_images
    assert sum(calls) == 2  # picture(5) once, picture(6) once
    assert FeatureCache.key(torch.ones(3, 2, 2)) == FeatureCache.key(torch.ones(3, 2, 2))


def test_bad_requests_fail_at_submit(engine, tmp_path):
    with pytest.raises(llavakit.ImageError):
        engine.submit(Request.question("what?", [tmp_path / "nowhere.png"]))
    with pytest.raises(ValueError, match="placeholder"):
        engine.submit(Request.question("<image><image>", [picture(1)]))
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
    assert engine.generate([Request.question("still fine", [], max_new_tokens=2)])[0].completion_tokens == 2


def test_many_threads_submitting(engine):
    requests = mixed_requests(max_new_tokens=6)
    expected = [r.token_ids for r in engine.generate(requests)]
    results: dict[int, list[int]] = {}

    def worker(i: int) -> None:
        results[i] = engine.submit(requests[i % 4], block=True).result(timeout=30).token_ids

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == expected[i % 4] for i in range(8))


def test_int8_stays_close_to_fp32(tiny_checkpoint):
    reference = llavakit.load(tiny_checkpoint, dtype="fp32", device="cpu")
    quantized = llavakit.load(tiny_checkpoint, dtype="fp32", device="cpu")
    quantize_model(quantized.model, "int8")
    batch = reference.prepare([[{"role": "user", "content": "What is the dog doing?"}]], [[picture(1)]])
    with torch.inference_mode():
        ref = reference.model(batch.input_ids, batch.pixel_values)
        got = quantized.model(batch.input_ids, batch.pixel_values)
    # Tolerance: int8 weights (per output channel) and int8 activations (quantized per call)
    # move this model's logits by about 2 % of their largest magnitude; 5 % leaves room for
    # kernel differences without hiding a real bug (a wrong scale is off by far more).
    assert (got - ref).abs().max() / ref.abs().max() < 0.05
    assert quantized.model.dtype == torch.float32
    with Engine(quantized) as engine:
        assert engine.generate(mixed_requests(max_new_tokens=4))[0].completion_tokens == 4


def test_bf16_engine_runs(tiny_checkpoint):
    model = llavakit.load(tiny_checkpoint, dtype="bf16", device="cpu")
    request = mixed_requests(max_new_tokens=5)[0]
    with Engine(model) as engine:
        result = engine.generate([request])[0]
    batch = model.prepare([request.messages], [request.images])
    reference = model.model.generate(batch.input_ids, batch.pixel_values, max_new_tokens=5, eos_token_ids=[])
    assert len(result.token_ids) == 5 and result.token_ids[0] == reference[0][0]  # same prefill, same first token


def test_vanishing_top_p_keeps_the_likeliest_token():
    from llavakit.engine.sampling import filter_top_k_top_p

    logits = torch.tensor([0.5, 3.0, -1.0, 2.0])
    for top_p in (5e-268, 1e-9, 0.1):  # the first is 0 in float32
        kept = filter_top_k_top_p(logits, 0, top_p)
        assert torch.isfinite(kept).tolist() == [False, True, False, False]
