"""Load a YAML config once, apply CLI overrides, and expand symbol universes.

Errors name the key and the file: ``configs/my.yaml: training.epocs: Extra
inputs are not permitted`` so a typo fails before any work is done.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from configs.schema import Config

CONFIG_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
TEST_CONFIG = CONFIG_DIR / "test.yaml"
UNIVERSES = CONFIG_DIR / "universes.yaml"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema (exit code 2)."""


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


#: The overrides every entry point offers (CLI flag, Prefect UI parameter,
#: deployment parameter), by name, and the config key each one sets.
OVERRIDE_KEYS: dict[str, str] = {
    "symbols": "run.symbols", "source": "data.source", "days": "data.days",
    "epochs": "training.epochs", "batch_size": "training.batch_size", "seed": "training.seed",
    "threads": "training.threads", "parallel": "run.parallel",
    "results_dir": "run.results_dir", "store_url": "run.store_url", "as_of": "data.as_of",
    "warm_start": "retrain.warm_start", "executor": "run.executor", "work_pool": "run.work_pool",
    "dask_address": "run.dask_address",
}


def _validate(raw: dict[str, Any], where: str | Path) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from exc


def _dotted(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"training": {"epochs": 3}}`` and ``{"training.epochs": 3}`` alike as dotted keys."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            out |= _dotted(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def apply_overrides(config: Config, overrides: Mapping[str, Any] | None, where: str = "overrides") -> Config:
    """``config`` with ``overrides`` applied and the whole validated again.

    ``overrides`` maps dotted keys (``"training.epochs"``) or nested sections
    to values; None keeps the config's value (an empty CLI flag or UI field).
    Every entry point goes through here: the CLIs, the flows' UI parameters,
    the deployments. Errors name the key: ``overrides: training.epocs: Extra
    inputs are not permitted``.
    """
    raw = config.model_dump()
    for key, value in _dotted(overrides or {}).items():
        if value is None:
            continue
        *sections, leaf = key.split(".")
        node = raw
        for section in sections:
            child = node.get(section)
            if not isinstance(child, dict):
                raise ConfigError(f"{where}: {key}: {section!r} is not a config section; "
                                  f"sections are {', '.join(Config.model_fields)}")
            node = child
        node[leaf] = value
    return _validate(raw, where)


def named_overrides(**values: Any) -> dict[str, Any]:
    """``named_overrides(epochs=3, source=None)`` -> ``{"training.epochs": 3}``
    (names of ``OVERRIDE_KEYS``; None is left out)."""
    unknown = sorted(set(values) - set(OVERRIDE_KEYS))
    if unknown:
        raise ConfigError(f"unknown override(s) {unknown}; known: {', '.join(OVERRIDE_KEYS)}")
    return {OVERRIDE_KEYS[k]: v for k, v in values.items() if v is not None}


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read ``path`` (default ``configs/default.yaml``), validate it on its own
    (so a flag cannot mask a broken file), then apply ``overrides``."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    return apply_overrides(_validate(_read_yaml(path), path), overrides, f"{path} + overrides")


def load_universes(path: Path = UNIVERSES) -> dict[str, list[str]]:
    raw = _read_yaml(path)
    return {str(k): [str(s) for s in v] for k, v in raw.items()}


def resolve_symbols(names: list[str], universes: dict[str, list[str]] | None = None) -> list[str]:
    """Expand universe names (``TIER_1``) into tickers, upper-cased (one name
    per symbol in the store; ``files:`` matches file names case-insensitively);
    keep the order, drop repeats."""
    universes = load_universes() if universes is None else universes
    out: list[str] = []
    for name in names:
        for symbol in universes.get(name, [name]):
            symbol = symbol.strip().upper()
            if symbol and symbol not in out:
                out.append(symbol)
    if not out:
        raise ConfigError(f"no symbols in {names!r}; name tickers (AAPL,MSFT) or a universe ({', '.join(universes)})")
    return out
