"""Load a YAML config once, apply CLI overrides, and expand symbol universes.

Errors name the key and the file: ``configs/my.yaml: training.epocs: Extra
inputs are not permitted`` so a typo fails before any work is done.
"""

from __future__ import annotations

from pathlib import Path
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


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


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


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read ``path`` (default ``configs/default.yaml``), deep-merge ``overrides``
    (nested dicts, e.g. ``{"training": {"epochs": 3}}``) and validate."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    raw = _deep_merge(_read_yaml(path), overrides or {})
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc


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
