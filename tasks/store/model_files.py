"""A trained model's files, kept in the results database (table ``model_files``).

A model is ``weights.safetensors`` (its state dict), ``metadata.json`` and
the PNG plots of its training, each one row: name, content, sha256, size.
``save_model`` inserts them inside the store's transaction, so a caller that
also records the run's rows in it (``save_trained_model``) commits the model
and its rows together or not at all. A model's key is ``store:SYMBOL/RUN_ID``
(``symbol_runs.model_path``). ``load_model`` checks every sha256 and decodes
with safetensors and json only: nothing is ever unpickled.

Why the database rather than files on a shared disk or in an object store
(fsspec): one transaction covers the model and its rows, so no reader ever
finds a row whose model is missing or a model without its rows, and a second
machine needs nothing but the database URL it already has; no other service
to run, secure and back up. Models are well under 1 MB, a size both SQLite
and PostgreSQL (BYTEA) hold without trouble.

``package_versions`` is here too: it is what a model's metadata records about
the libraries that made it, and nothing else uses it.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from sqlalchemy import select

from tasks.atomic import atomic_write
from tasks.bars import validate_symbol
from tasks.store.db import ResultsStore, check_run_id, to_json
from tasks.store.tables import MODEL_FILES

WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "metadata.json"
_FILE_NAME = re.compile(r"[a-z0-9_][a-z0-9_.\-]{0,63}")  # plain names: they may become file names on export
_KEY = re.compile(r"store:(?P<symbol>[^/]+)/(?P<run_id>[^/]+)")


class ModelFileError(ValueError):
    """A stored model that cannot be loaded safely: missing, damaged or not what it claims."""


def model_key(symbol: str, run_id: str) -> str:
    """``store:SYMBOL/RUN_ID``: how symbol_runs.model_path names a model in the store."""
    return f"store:{symbol}/{run_id}"


def parse_model_key(key: str) -> tuple[str, str]:
    """(symbol, run_id) of ``store:SYMBOL/RUN_ID``."""
    match = _KEY.fullmatch(str(key))
    if match is None:
        raise ModelFileError(
            f"model {key!r} is not a store key (store:SYMBOL/RUN_ID); a path here is a model directory "
            "written by an earlier mambaflow, which kept models on disk: retrain the symbol "
            "(python -m flows.train --symbols SYMBOL) to keep its model in the results database")
    return match["symbol"], match["run_id"]


def save_model(store: ResultsStore, symbol: str, run_id: str, state_dict: dict[str, torch.Tensor],
               metadata: dict, files: dict[str, bytes] | None = None) -> str:
    """Insert the model's weights (safetensors), metadata (JSON) and ``files``
    (e.g. PNG plots, by name) into ``model_files``; returns the model's key.

    Runs in ``store.transaction()``: inside a caller's transaction the rows
    commit with the caller's. A model already saved under this run and
    symbol is never replaced: FileExistsError (run ids are unique, so this
    means the run was already saved). Bad metadata or a bad name fails before
    anything is written.
    """
    symbol = validate_symbol(symbol)  # canonical case: the key must match what readers ask for
    check_run_id(run_id)
    if not isinstance(metadata, dict):
        raise TypeError(f"{symbol}: metadata must be a dict, got {type(metadata).__name__}")
    extra = dict(files or {})
    bad = sorted(n for n in extra if n in (WEIGHTS_FILE, METADATA_FILE) or not _FILE_NAME.fullmatch(n))
    if bad:
        raise ValueError(f"{symbol}: file names {bad} refused: use lowercase letters, digits, '_', '.', '-' "
                         f"(up to 64), other than {WEIGHTS_FILE} and {METADATA_FILE}")
    # own, contiguous CPU copies: safetensors refuses views and shared storage
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    contents = {WEIGHTS_FILE: save_safetensors(tensors), METADATA_FILE: to_json(metadata).encode("utf-8"), **extra}
    rows = [{"run_id": run_id, "symbol": symbol, "name": name, "content": content,
             "sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
            for name, content in contents.items()]
    key = model_key(symbol, run_id)
    with store.transaction() as conn:
        t = MODEL_FILES
        if conn.execute(select(t.c.name).where(t.c.run_id == run_id, t.c.symbol == symbol).limit(1)).first():
            raise FileExistsError(f"{symbol}: model {key} already exists in {store.url}; save under a new run id")
        conn.execute(t.insert(), rows)
    return key


def save_trained_model(store: ResultsStore, symbol: str, run_id: str, state_dict: dict[str, torch.Tensor],
                       metadata: dict, files: dict[str, bytes], epoch_metrics: list[dict], evaluation: list[dict],
                       **symbol_run: Any) -> str:
    """A trained model and its rows in one transaction: its files
    (``save_model``), epoch metrics, evaluation and its completed symbol_runs
    row (``symbol_run``: the other keyword arguments of ``record_symbol``),
    so that every reader sees all of them or none. Returns the model's key."""
    with store.transaction():
        key = save_model(store, symbol, run_id, state_dict, metadata, files)
        store.record_epochs(run_id, symbol, epoch_metrics)
        store.record_evaluation(run_id, symbol, evaluation)
        store.record_symbol(run_id, symbol, "completed", model_path=key, **symbol_run)
    return key


def read_model_files(store: ResultsStore, key: str) -> dict[str, bytes]:
    """{name: content} of every file of the model ``key``, each checked
    against its stored sha256 and size."""
    symbol, run_id = parse_model_key(key)
    t = MODEL_FILES
    rows = store.read(select(t).where(t.c.run_id == run_id, t.c.symbol == symbol).order_by(t.c.name))
    if not rows:
        raise ModelFileError(f"model {key} has no files in {store.url}; retrain: "
                             f"python -m flows.train --symbols {symbol}")
    out = {}
    for r in rows:
        content = bytes(r["content"])
        digest = hashlib.sha256(content).hexdigest()
        if digest != r["sha256"] or len(content) != r["size"]:
            raise ModelFileError(
                f"{key}/{r['name']} is damaged: sha256 {digest[:12]}..., {len(content)} bytes; stored "
                f"{r['sha256'][:12]}..., {r['size']} bytes. It changed after it was saved; retrain the symbol")
        out[r["name"]] = content
    return out


def load_model(store: ResultsStore, key: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict on CPU, metadata) of the model ``key``; never unpickles."""
    return decode_model(key, read_model_files(store, key))


def decode_model(key: str, files: dict[str, bytes]) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict on CPU, metadata) from the model ``key``'s files (``read_model_files``)."""
    for name in (WEIGHTS_FILE, METADATA_FILE):
        if name not in files:
            raise ModelFileError(f"{key}/{name} is missing: a model holds {WEIGHTS_FILE} and {METADATA_FILE}")
    try:
        state = load_safetensors(files[WEIGHTS_FILE])
    except SafetensorError as e:
        raise ModelFileError(
            f"{key}/{WEIGHTS_FILE} is not a safetensors file ({e}); refusing it: models are never unpickled. "
            "Retrain, or convert it yourself with safetensors.torch.save") from e
    try:
        metadata = json.loads(files[METADATA_FILE].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{key}/{METADATA_FILE} is not JSON: {e}") from e
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{key}/{METADATA_FILE} holds a {type(metadata).__name__}, expected a JSON object")
    return state, metadata


def export_model(store: ResultsStore, key: str, folder: str | Path) -> Path:
    """Write the files of the model ``key`` to ``FOLDER/SYMBOL/RUN_ID/`` (each
    one whole: write-then-rename), for tools that want files; returns that directory."""
    symbol, run_id = parse_model_key(key)
    target = Path(folder) / symbol / run_id
    for name, content in read_model_files(store, key).items():
        atomic_write(target / name, lambda tmp, content=content: tmp.write_bytes(content))
    return target


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
