"""Turning a model reference (local folder or hub id) into a local folder."""

from __future__ import annotations

import re
from pathlib import Path

from llavakit.checkpoints.io import CheckpointError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_WANTED = ["*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.jinja"]


def resolve(reference: str | Path, revision: str | None = None) -> Path:
    """A local directory for `reference`: the folder itself, or a hub snapshot.

    Hub ids go through huggingface_hub, so its cache, HF_HOME, HF_TOKEN and HF_HUB_OFFLINE
    work as everywhere else; an offline machine uses the cached snapshot or gets a clear error.
    """
    path = Path(reference).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; give the checkpoint's folder")
    text = str(reference)
    if not _HUB_ID.match(text):
        raise CheckpointError(f"no checkpoint folder at {path} (and {text!r} is not a hub id like 'owner/name')")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - huggingface_hub is a dependency
        raise CheckpointError("huggingface_hub is needed to download models by id") from err
    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=_WANTED))
    except Exception as err:
        raise CheckpointError(
            f"{text!r} is not a local folder and could not be fetched from the hub "
            f"({type(err).__name__}: {err}). Offline, download it once elsewhere or pass the path "
            "of a local copy."
        ) from err
