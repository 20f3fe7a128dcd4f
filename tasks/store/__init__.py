"""Results store: what every run learned, in SQL (``db``, ``tables``), and the
model files on disk (``model_files``).

    with ResultsStore(results_dir, url) as store:
        store.start_run(run_id, config, symbols)
        ...
    model_dir = save_model(results_dir, symbol, run_id, state_dict, metadata)
    state_dict, metadata = load_model(model_dir)

Import these names from ``tasks.store``: which module defines each is the
layout, not the API.
"""

from tasks.store.db import RUN_STATUSES, SYMBOL_STATUSES, ResultsStore, to_json
from tasks.store.model_files import (
    METADATA_FILE, WEIGHTS_FILE, ModelFileError, load_model, package_versions, save_model,
)
from tasks.store.tables import BACKTESTS, EPOCH_METRICS, EVALUATIONS, PREDICTIONS, RUNS, SCHEMA, SYMBOL_RUNS

__all__ = [
    "BACKTESTS", "EPOCH_METRICS", "EVALUATIONS", "METADATA_FILE", "PREDICTIONS", "RUNS", "RUN_STATUSES", "SCHEMA",
    "SYMBOL_RUNS", "SYMBOL_STATUSES", "WEIGHTS_FILE", "ModelFileError", "ResultsStore", "load_model",
    "package_versions", "save_model", "to_json",
]
