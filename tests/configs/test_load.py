"""configs: loading, overrides, errors that name the key, universes."""

from __future__ import annotations

import pytest

from configs.load import (DEFAULT_CONFIG, OVERRIDE_KEYS, TEST_CONFIG, ConfigError, apply_overrides, load_config,
                          load_universes, named_overrides, resolve_symbols)
from configs.schema import Config


def test_shipped_files_validate_and_default_yaml_matches_the_schema_defaults():
    assert load_config(DEFAULT_CONFIG) == Config()
    test = load_config(TEST_CONFIG)
    assert (test.data.source, test.data.days, test.training.epochs, test.run.symbols) == ("sample", 2500, 10, ["TEST"])


def test_overrides_merge_into_sections_without_dropping_siblings():
    cfg = load_config(TEST_CONFIG, {"training": {"epochs": 2}, "run": {"parallel": 3}})
    assert cfg.training.epochs == 2 and cfg.training.patience == 3  # patience kept from test.yaml
    assert cfg.run.parallel == 3 and cfg.run.symbols == ["TEST"]


@pytest.mark.parametrize("yaml_text,key", [
    ("training:\n  epocs: 3\n", "training.epocs"),
    ("model:\n  d_model: wide\n", "model.d_model"),
    ("windows:\n  horizons: [5, 0]\n", "windows.horizons"),
    ("data:\n  source: ''\n", "data.source"),
    ("runs:\n  parallel: 2\n", "runs"),
])
def test_errors_name_the_key_and_the_file(tmp_path, yaml_text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert key in str(exc.value) and str(path) in str(exc.value)


def test_not_a_mapping_and_missing_file_are_config_errors(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_config_is_frozen():
    with pytest.raises(ValueError):
        Config().training.epochs = 3


def test_universes_expand_in_order_without_repeats():
    universes = load_universes()
    assert len(universes["TIER_1"]) == 50 == len(set(universes["TIER_1"]))
    assert resolve_symbols(["MSFT", "TEST", " ibm "]) == ["MSFT", "AAPL", "IBM"]
    assert resolve_symbols(["SAMPLE"]) == ["AAPL", "GOOG", "IBM", "MSFT"]
    with pytest.raises(ConfigError, match="TIER_1"):
        resolve_symbols([" "])


def test_apply_overrides_dotted_or_nested_none_keeps():
    base = load_config(TEST_CONFIG)
    a = apply_overrides(base, {"training.epochs": 2, "data.days": None, "run": {"symbols": ["AAPL"]}})
    assert (a.training.epochs, a.data.days, a.run.symbols) == (2, 2500, ["AAPL"])
    assert a.training.patience == base.training.patience == 3
    assert apply_overrides(base, None) == base and apply_overrides(base, {"data.days": None}) == base


@pytest.mark.parametrize("overrides,key", [
    ({"training.epocs": 2}, "training.epocs"),
    ({"trainin.epochs": 2}, "trainin"),
    ({"training.epochs": 0}, "training.epochs"),
    ({"run.symbols": []}, "run.symbols"),
])
def test_bad_overrides_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        apply_overrides(load_config(TEST_CONFIG), overrides)


def test_named_overrides_map_flags_to_keys():
    assert named_overrides(epochs=3, source=None, results_dir="r") == {"training.epochs": 3, "run.results_dir": "r"}
    assert set(OVERRIDE_KEYS.values()) <= {f"{s}.{k}" for s, sec in Config().model_dump().items() for k in sec}
    with pytest.raises(ConfigError, match="unknown override"):
        named_overrides(epoch=3)


def test_yaml_is_validated_before_overrides(tmp_path):
    """A flag must not mask a broken file: ``training: 5`` fails even with --epochs."""
    path = tmp_path / "bad.yaml"
    path.write_text("training: 5\n")
    with pytest.raises(ConfigError, match="training"):
        load_config(path, {"training.epochs": 1})
