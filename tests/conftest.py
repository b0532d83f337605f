"""Shared fixtures. One torch thread per xdist worker, so two workers share two cores."""

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A llavakit checkpoint folder with random weights and a real sentencepiece tokenizer."""
    from tiny_models import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def served_tiny_model(tmp_path_factory):
    """A real `llavakit serve` on 127.0.0.1 running a tiny model with a 4096-token context (judge
    and data-generation prompts are long): yields (base URL ending in /v1, model name)."""
    from test_serve_helpers import running_server
    from tiny_models import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(tmp_path_factory.mktemp("served") / "model", context=4096)
    log = tmp_path_factory.mktemp("served_log") / "serve.log"
    with running_server(["--model", str(checkpoint), "--model-name", "tiny-served"], log) as (_, url):
        yield f"{url}/v1", "tiny-served"
