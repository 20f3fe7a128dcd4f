"""Results store, model files in the database: bit-identical round trips, a
model and its rows saved together or not at all, checked reads, no pickles.
Every test runs on SQLite and on PostgreSQL (conftest.py)."""

import datetime as dt
import hashlib
import io

import numpy as np
import pytest
import sqlalchemy as sa
import torch

from tasks.store import (
    METADATA_FILE, MODEL_FILES, WEIGHTS_FILE, ModelFileError, ResultsStore, export_model, load_model, read_model_files,
    package_versions, save_model, save_trained_model,
)


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
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


@pytest.fixture
def store(store):
    for rid in ("run0", "run1", "run2"):
        store.start_run(rid, {}, ["AAPL"])
    return store


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _stored(store: ResultsStore) -> list[tuple]:
    t = MODEL_FILES
    return [(r["run_id"], r["symbol"], r["name"]) for r in store.read(
        sa.select(t.c.run_id, t.c.symbol, t.c.name).order_by(t.c.run_id, t.c.symbol, t.c.name))]


def _overwrite(store: ResultsStore, run_id: str, name: str, content: bytes, *, fix_digest: bool = True) -> None:
    """Change a stored file behind the store's back (with its digest fixed, or not)."""
    values = {"content": content}
    if fix_digest:
        values |= {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
    with store.engine.begin() as conn:
        conn.execute(sa.update(MODEL_FILES).where(MODEL_FILES.c.run_id == run_id, MODEL_FILES.c.name == name)
                     .values(**values))


def test_save_load_round_trip_is_bit_identical(store):
    state = _state(0)
    key = save_model(store, "aapl", "run1", state, {**METADATA, "versions": package_versions()}, {"plot.png": PNG})
    assert key == "store:AAPL/run1"                              # canonical upper case
    files = read_model_files(store, key)
    assert sorted(files) == [METADATA_FILE, "plot.png", WEIGHTS_FILE] and files["plot.png"] == PNG
    rows = store.read(sa.select(MODEL_FILES.c.name, MODEL_FILES.c.sha256, MODEL_FILES.c.size))
    assert {r["name"]: (r["sha256"], r["size"]) for r in rows} == {
        n: (hashlib.sha256(c).hexdigest(), len(c)) for n, c in files.items()}
    loaded, meta = load_model(store, key)
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
        assert torch.equal(_bits(loaded[k]), _bits(v)), k
    versions = meta.pop("versions")
    assert meta == METADATA_AS_JSON
    assert versions["torch"] == torch.__version__
    assert versions["numpy"] == np.__version__ and versions["python"].count(".") == 2


def test_existing_model_is_never_replaced(store):
    key = save_model(store, "AAPL", "run1", _state(0), METADATA)
    with pytest.raises(FileExistsError, match="AAPL: model store:AAPL/run1 already exists"):
        save_model(store, "AAPL", "run1", _state(1), METADATA)
    assert torch.equal(load_model(store, key)[0]["layers.0.A_log"], _state(0)["layers.0.A_log"])


@pytest.mark.parametrize("crash_in", [
    "tasks.store.model_files.save_safetensors",   # before any row
    "tasks.store.db.ResultsStore.record_epochs",  # after the model files
    "tasks.store.db.ResultsStore.record_evaluation",
    "tasks.store.db.ResultsStore.record_symbol",  # after everything but the symbol_run
], ids=lambda name: name.rsplit(".", 1)[1])
def test_a_crash_mid_save_leaves_no_model_nor_rows_and_the_previous_one_readable(store, monkeypatch, crash_in):
    def save(run_id: str, seed: int) -> str:
        return save_trained_model(store, "AAPL", run_id, _state(seed), METADATA, {"plot.png": PNG},
                                  [{"epoch": 0, "val_loss": 0.5}], [{"horizon": 1, "n": 9}], epochs=1)

    previous = save("run1", 0)

    def boom(*args, **kwargs):
        raise OSError("simulated crash")

    monkeypatch.setattr(crash_in, boom)
    with pytest.raises(OSError, match="simulated crash"):
        save("run2", 1)
    monkeypatch.undo()
    assert {r[0] for r in _stored(store)} == {"run1"}           # no file of run2
    assert store.epoch_metrics("run2", "AAPL") == [] and store.evaluations("run2", "AAPL") == []
    assert [r["run_id"] for r in store.symbol_runs()] == ["run1"]
    assert store.latest_model("AAPL") == previous
    state, meta = load_model(store, previous)
    assert torch.equal(state["layers.0.D"], _state(0)["layers.0.D"]) and meta == METADATA_AS_JSON


def test_bad_input_fails_before_anything_is_written(store):
    with pytest.raises(TypeError, match="object is not JSON"):
        save_model(store, "AAPL", "run1", _state(0), {"bad": object()})
    with pytest.raises(ValueError, match="invalid symbol '../../x'"):
        save_model(store, "../../x", "run1", _state(0), METADATA)
    with pytest.raises(ValueError, match="bad run id"):
        save_model(store, "AAPL", "../run1", _state(0), METADATA)
    for name in ("../plot.png", "Plot.PNG", WEIGHTS_FILE):
        with pytest.raises(ValueError, match=r"file names \[.*\] refused"):
            save_model(store, "AAPL", "run1", _state(0), METADATA, {name: PNG})
    assert _stored(store) == []


@pytest.mark.parametrize("zipfile", [True, False], ids=["torch.save-zip", "torch.save-legacy"])
def test_load_refuses_a_pickle(store, monkeypatch, zipfile):
    key = save_model(store, "AAPL", "run1", _state(0), METADATA)
    buf = io.BytesIO()
    torch.save(_state(0), buf, _use_new_zipfile_serialization=zipfile)
    _overwrite(store, "run1", WEIGHTS_FILE, buf.getvalue())     # with a matching digest: only the format is wrong
    # loading must not even try to unpickle
    monkeypatch.setattr("pickle.loads", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    with pytest.raises(ModelFileError, match=r"store:AAPL/run1/weights\.safetensors is not a safetensors file"):
        load_model(store, key)


def test_load_refuses_damaged_files_bad_metadata_and_unknown_models(store):
    key = save_model(store, "AAPL", "run1", _state(0), METADATA, {"plot.png": PNG})
    _overwrite(store, "run1", "plot.png", PNG[:-1] + b"\x00", fix_digest=False)
    with pytest.raises(ModelFileError, match=r"store:AAPL/run1/plot\.png is damaged: sha256 .* stored .*retrain"):
        read_model_files(store, key)
    _overwrite(store, "run1", "plot.png", PNG)
    _overwrite(store, "run1", METADATA_FILE, b"[1, 2]")
    with pytest.raises(ModelFileError, match="holds a list, expected a JSON object"):
        load_model(store, key)
    _overwrite(store, "run1", METADATA_FILE, b"{not json")
    with pytest.raises(ModelFileError, match=r"metadata\.json is not JSON"):
        load_model(store, key)
    with store.engine.begin() as conn:
        conn.execute(sa.delete(MODEL_FILES).where(MODEL_FILES.c.name == METADATA_FILE))
    with pytest.raises(ModelFileError, match=r"store:AAPL/run1/metadata\.json is missing"):
        load_model(store, key)
    with pytest.raises(ModelFileError, match="store:MSFT/run1 has no files in .*python -m flows.train --symbols MSFT"):
        load_model(store, "store:MSFT/run1")
    # what an earlier version recorded: a model directory on disk
    with pytest.raises(ModelFileError, match="earlier mambaflow, which kept models on disk: retrain"):
        load_model(store, "models/AAPL/run0")


def test_a_models_files_come_out_as_files_or_through_sql(store, tmp_path):
    key = save_model(store, "AAPL", "run1", _state(0), METADATA, {"plot.png": PNG})
    folder = export_model(store, key, tmp_path / "exported")
    assert folder == tmp_path / "exported" / "AAPL" / "run1"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == read_model_files(store, key)
    # the query README.md gives, with the database's own tools
    with store.engine.connect() as conn:
        listed = conn.exec_driver_sql("select name, size, sha256 from model_files "
                                      "where symbol = 'AAPL' and run_id = 'run1' order by name").all()
    assert [tuple(r) for r in listed] == [
        (p.name, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) for p in sorted(folder.iterdir())]
