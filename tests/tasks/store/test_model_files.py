"""Results store, model files: bit-identical round trips, atomic saves, no pickles."""

import datetime as dt
import os
import time

import numpy as np
import pytest
import torch

import tasks.store.model_files as model_files
from tasks.store import METADATA_FILE, WEIGHTS_FILE, ModelFileError, load_model, package_versions, save_model


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layers.0.A_log": torch.randn(8, 4, generator=g),
        "layers.0.D": torch.randn(8, generator=g, dtype=torch.float64),
        "head.weight": torch.randn(4, 3, generator=g).T,      # non-contiguous view
        "step": torch.tensor(7, dtype=torch.int64),
        "half": torch.randn(5, generator=g).to(torch.bfloat16),
    }


METADATA = {
    "config": {"model": {"d_model": 64}}, "features": ["ret_1", "rsi_14"],
    "scaler": {"mean": [0.1, 0.2], "std": [1.0, 2.0]}, "horizons": [1, 5, 10, 30],
    "seq_len": 60, "splits": {"train": [dt.date(2020, 1, 2), dt.date(2022, 6, 30)]},
    "fingerprint": "abc", "metrics": {"skill": np.float64(0.125)},
}
METADATA_AS_JSON = {**METADATA, "splits": {"train": ["2020-01-02", "2022-06-30"]},
                    "metrics": {"skill": 0.125}}


def test_save_load_round_trip_is_bit_identical(tmp_path):
    state = _state(0)
    path = save_model(tmp_path, "brk-b", "run1", state, {**METADATA, "versions": package_versions()})
    assert path == tmp_path / "models" / "BRK-B" / "run1"       # canonical upper case
    assert sorted(os.listdir(path)) == [METADATA_FILE, WEIGHTS_FILE]
    assert os.listdir(path.parent) == ["run1"]                  # no temp dir left
    loaded, meta = load_model(path)
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
        assert torch.equal(loaded[k].reshape(-1).view(torch.uint8),
                           v.contiguous().reshape(-1).view(torch.uint8)), k
    versions = meta.pop("versions")
    assert meta == METADATA_AS_JSON
    assert versions["torch"] == torch.__version__
    assert versions["numpy"] == np.__version__ and versions["python"].count(".") == 2


def test_existing_model_is_never_replaced(tmp_path):
    path = save_model(tmp_path, "AAPL", "run1", _state(0), METADATA)
    with pytest.raises(FileExistsError, match="AAPL: model .*run1 already exists"):
        save_model(tmp_path, "AAPL", "run1", _state(1), METADATA)
    assert torch.equal(load_model(path)[0]["layers.0.A_log"], _state(0)["layers.0.A_log"])


@pytest.mark.parametrize("crash_at", ["rename", "metadata", "weights"])
def test_crash_mid_save_leaves_no_model_and_previous_readable(tmp_path, monkeypatch, crash_at):
    previous = save_model(tmp_path, "AAPL", "run1", _state(0), METADATA)

    def boom(*args, **kwargs):
        raise OSError("simulated crash")

    if crash_at == "rename":
        monkeypatch.setattr(model_files.os, "rename", boom)
    elif crash_at == "weights":
        monkeypatch.setattr(model_files, "save_file", boom)
    else:
        monkeypatch.setattr(model_files.os, "fsync", boom)   # after weights, while writing metadata
    with pytest.raises(OSError, match="simulated crash"):
        save_model(tmp_path, "AAPL", "run2", _state(1), METADATA)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "models" / "AAPL")) == ["run1"]   # no run2, no temp dir
    state, meta = load_model(previous)
    assert torch.equal(state["layers.0.D"], _state(0)["layers.0.D"]) and meta == METADATA_AS_JSON


def test_temp_dir_of_a_killed_save_of_the_same_run_is_swept_whatever_its_age(tmp_path):
    stale = tmp_path / "models" / "AAPL" / ".run2.deadbeef.tmp"
    stale.mkdir(parents=True)
    (stale / WEIGHTS_FILE).write_bytes(b"half a file")
    save_model(tmp_path, "AAPL", "run2", _state(0), METADATA)
    assert os.listdir(tmp_path / "models" / "AAPL") == ["run2"]


def test_temp_dirs_of_other_runs_are_swept_only_when_older_than_the_limit(tmp_path):
    aapl, msft = tmp_path / "models" / "AAPL", tmp_path / "models" / "MSFT"
    kept_model = save_model(tmp_path, "AAPL", "run0", _state(0), METADATA)
    now = time.time()
    ages = {  # seconds since last touched
        aapl / ".run1.0badc0de.tmp": model_files.STALE_TEMP_SECONDS + 60,   # a dead save: swept
        aapl / ".run3.12345678.tmp": model_files.STALE_TEMP_SECONDS - 60,   # may be live: kept
        msft / ".run1.0badc0de.tmp": 10 * model_files.STALE_TEMP_SECONDS,   # another symbol: not looked at
        kept_model: 10 * model_files.STALE_TEMP_SECONDS,                    # a model, however old: kept
    }
    for path, age in ages.items():
        path.mkdir(parents=True, exist_ok=True)
        (path / "x").touch()
        os.utime(path, (now - age, now - age))
    save_model(tmp_path, "AAPL", "run2", _state(1), METADATA)
    assert sorted(os.listdir(aapl)) == [".run3.12345678.tmp", "run0", "run2"]
    assert os.listdir(msft) == [".run1.0badc0de.tmp"]
    assert torch.equal(load_model(kept_model)[0]["layers.0.D"], _state(0)["layers.0.D"])


def test_unserialisable_metadata_fails_before_touching_disk(tmp_path):
    with pytest.raises(TypeError, match="object is not JSON"):
        save_model(tmp_path, "AAPL", "run1", _state(0), {"bad": object()})
    with pytest.raises(ValueError, match="invalid symbol '../../x'"):
        save_model(tmp_path, "../../x", "run1", _state(0), METADATA)
    with pytest.raises(ValueError, match="invalid symbol '..'"):
        save_model(tmp_path, "..", "run1", _state(0), METADATA)
    with pytest.raises(ValueError, match="bad run id"):
        save_model(tmp_path, "AAPL", "../run1", _state(0), METADATA)
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("zipfile", [True, False], ids=["torch.save-zip", "torch.save-legacy"])
def test_load_refuses_a_pickle(tmp_path, monkeypatch, zipfile):
    path = save_model(tmp_path, "AAPL", "run1", _state(0), METADATA)
    torch.save(_state(0), path / WEIGHTS_FILE, _use_new_zipfile_serialization=zipfile)
    # loading must not even try to unpickle
    monkeypatch.setattr("pickle.loads", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    with pytest.raises(ValueError, match=r"weights\.safetensors is not a safetensors file"):
        load_model(path)


def test_load_refuses_missing_or_bad_metadata(tmp_path):
    path = save_model(tmp_path, "AAPL", "run1", _state(0), METADATA)
    (path / METADATA_FILE).write_text("[1, 2]")
    with pytest.raises(ModelFileError, match="expected a JSON object"):
        load_model(path)
    (path / METADATA_FILE).write_text("{not json")
    with pytest.raises(ModelFileError, match="is not JSON"):
        load_model(path)
    (path / METADATA_FILE).unlink()
    with pytest.raises(ValueError, match=r"metadata\.json is missing"):
        load_model(path)
    with pytest.raises(ValueError, match=r"weights\.safetensors is missing"):
        load_model(tmp_path / "nowhere")


