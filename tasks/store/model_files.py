"""Model files on disk: ``RESULTS/models/SYMBOL/RUN_ID/``.

A model directory holds ``weights.safetensors`` and ``metadata.json``.
``save_model`` writes both into a hidden sibling directory, fsyncs, and
renames it into place, so a crash leaves either the whole model or nothing;
``load_model`` reads them with safetensors and json only, never pickle.

``package_versions`` is here too: it is what a model's metadata records about
the libraries that made it, and nothing else uses it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import sys
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tasks.bars import validate_symbol
from tasks.store.db import check_run_id, to_json

WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "metadata.json"
# A temporary model directory older than this belongs to a save that died:
# a live save creates the directory and both files within the time it takes
# to write the weights (seconds for these models), so an hour is a wide margin.
STALE_TEMP_SECONDS = 3600.0
_TEMP_DIR = re.compile(r"\.(?P<run_id>.+)\.[0-9a-f]{8}\.tmp")


class ModelFileError(ValueError):
    """A model directory that cannot be loaded safely."""


def save_model(
    results_dir: str | Path, symbol: str, run_id: str,
    state_dict: dict[str, torch.Tensor], metadata: dict,
) -> Path:
    """Write ``RESULTS/models/SYMBOL/RUN_ID/{weights.safetensors,metadata.json}`` atomically.

    Both files go into a hidden temporary sibling, are fsynced, and the
    directory is renamed into place. A crash before the rename leaves no
    model directory, only the hidden temp directory, which a later save for
    the symbol removes (``_sweep_temp_dirs``); after it, the whole model. An
    existing model directory is never replaced: FileExistsError (run ids are
    unique, so this means the run was already saved). Returns the model
    directory.
    """
    symbol = validate_symbol(symbol)  # it becomes a path: checked, canonical case
    check_run_id(run_id)
    if not isinstance(metadata, dict):
        raise TypeError(f"{symbol}: metadata must be a dict, got {type(metadata).__name__}")
    text = to_json(metadata)  # fails before anything touches the disk
    # own, contiguous CPU copies: safetensors refuses views and shared storage
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    parent = Path(results_dir) / "models" / symbol
    final = parent / run_id
    if final.exists():
        raise FileExistsError(f"{symbol}: model {final} already exists; save under a new run id")
    parent.mkdir(parents=True, exist_ok=True)
    _sweep_temp_dirs(parent, run_id)
    tmp = parent / f".{run_id}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        save_file(tensors, tmp / WEIGHTS_FILE)
        _fsync_file(tmp / WEIGHTS_FILE)
        with open(tmp / METADATA_FILE, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(f"{symbol}: model {final} appeared while saving") from e
            raise
        _fsync_dir(parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def _sweep_temp_dirs(parent: Path, run_id: str) -> None:
    """Remove the temp directories that crashed saves left in ``parent``.

    Any left by this run go, whatever their age: this run is being saved now,
    by this call. Those of other runs go only once older than
    ``STALE_TEMP_SECONDS``: another thread or machine may be saving another
    run of this symbol at this moment, and a young temp directory may be its.
    """
    cutoff = time.time() - STALE_TEMP_SECONDS
    for entry in parent.iterdir():
        match = _TEMP_DIR.fullmatch(entry.name)
        if match is None or not entry.is_dir():
            continue
        try:
            if match["run_id"] == run_id or entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry)
        except FileNotFoundError:
            pass  # another save swept it first


def load_model(model_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict on CPU, metadata) of a model directory; never unpickles."""
    model_dir = Path(model_dir)
    weights, meta = model_dir / WEIGHTS_FILE, model_dir / METADATA_FILE
    for f in (weights, meta):
        if not f.is_file():
            raise ModelFileError(f"{f} is missing: a model directory holds {WEIGHTS_FILE} and {METADATA_FILE}")
    try:
        state = load_file(weights, device="cpu")
    except SafetensorError as e:
        raise ModelFileError(
            f"{weights} is not a safetensors file ({e}); refusing it: models are never unpickled. "
            "Retrain, or convert it yourself with safetensors.torch.save_file"
        ) from e
    try:
        metadata = json.loads(meta.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{meta} is not JSON: {e}") from e
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{meta} holds a {type(metadata).__name__}, expected a JSON object")
    return state, metadata


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # makes a rename / new entry durable; directories cannot be opened on Windows
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def package_versions() -> dict[str, str | None]:
    """Versions of the libraries that shape a model, for its metadata."""
    def version(*dists: str) -> str | None:
        for d in dists:
            try:
                return importlib_metadata.version(d)
            except importlib_metadata.PackageNotFoundError:
                continue
        return None

    return {
        "python": sys.version.split()[0],
        "torch": version("torch"),
        "lightning": version("lightning", "pytorch-lightning"),
        "polars": version("polars"),
        "prefect": version("prefect"),
        "numpy": version("numpy"),
        "safetensors": version("safetensors"),
        "mambaflow": version("mambaflow"),
    }
