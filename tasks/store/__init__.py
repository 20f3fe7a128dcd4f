"""Results store: what every run learned and the models it trained, in one
SQL database (``db``, ``tables``; opened by ``engine``; model files in
``model_files``).

    with ResultsStore(results_dir, url) as store:
        store.start_run(run_id, config, symbols)
        # a model's files and its rows, in one transaction: together or not at all
        key = save_trained_model(store, symbol, run_id, state_dict, metadata, {"plot.png": png},
                                 epoch_metrics, evaluation, epochs=3, seconds=12.5)
        state_dict, metadata = load_model(store, store.latest_model(symbol))

Import these names from ``tasks.store``: which module defines each is the
layout, not the API.
"""

from tasks.store.db import RUN_STATUSES, SYMBOL_STATUSES, ResultsStore, to_json
from tasks.store.db import _upsert as upsert
from tasks.store.engine import StoreConnectionError, check_store
from tasks.store.model_files import (
    METADATA_FILE, WEIGHTS_FILE, ModelFileError, decode_model, export_model, load_model, model_key, read_model_files,
    package_versions, save_model, save_trained_model,
)
from tasks.store.tables import (
    BACKTESTS, EPOCH_METRICS, EVALUATIONS, EVENTS, MODEL_FILES, MODELS, PREDICTIONS, RUNS, SCHEMA, SCORES, SYMBOL_RUNS,
)

__all__ = [
    "BACKTESTS", "EPOCH_METRICS", "EVALUATIONS", "EVENTS", "METADATA_FILE", "MODEL_FILES", "MODELS", "PREDICTIONS",
    "RUNS", "RUN_STATUSES", "SCORES", "upsert",
    "SCHEMA", "SYMBOL_RUNS", "SYMBOL_STATUSES", "WEIGHTS_FILE", "ModelFileError", "ResultsStore",
    "StoreConnectionError", "check_store", "decode_model", "export_model", "load_model", "model_key", "read_model_files",
    "package_versions", "save_model", "save_trained_model", "to_json",
]
