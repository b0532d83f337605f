"""Fast generation: KV-cached, continuously batched, streaming, thread-safe.

    engine = Engine(llavakit.load("model"), max_batch_size=8)
    handle = engine.submit(Request.question("What is shown?", ["photo.jpg"], max_new_tokens=64))
    for delta in handle:          # or: async for delta in handle
        print(delta, end="")
    handle.result()               # GenerationResult(text, finish_reason, token counts, ...)
    engine.generate([...])        # many requests, results in order
"""

from llavakit.engine.core import Engine, FeatureCache
from llavakit.engine.detokenize import IncrementalDetokenizer, TextStream
from llavakit.engine.quantize import QuantizationError, quantize_model
from llavakit.engine.request import GenerationResult, Handle, QueueFull, Request
from llavakit.engine.sampling import SamplingParams

__all__ = [
    "Engine", "FeatureCache", "GenerationResult", "Handle", "IncrementalDetokenizer", "QuantizationError",
    "QueueFull", "Request", "SamplingParams", "TextStream", "quantize_model",
]
