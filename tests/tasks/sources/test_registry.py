"""tasks.sources: finding sources by name, the checks load_bars makes for every
source, date selection, and the files the fetch cache key covers."""

from __future__ import annotations

import copy
import importlib
import json
import pickle
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import polars as pl
import pytest

import tasks.sources as sources
import tasks.sources.yfinance as yfs
from tasks.bars import BARS_SCHEMA
from tasks.sources import (
    SourceError,
    check_source,
    known_sources,
    load_bars,
    source_code_files,
    source_code_hash,
)

TASKS = Path(sources.__file__).resolve().parents[1]
ROOT = TASKS.parent

# A whole source in one file: SOURCE and load(request). Prices are the argument.
CONSTANT = """
from datetime import date

import polars as pl

from tasks.bars import BARS_SCHEMA
from tasks.sources._base import Request

SOURCE = "constant:PRICE"


def load(request: Request) -> pl.DataFrame:
    price = float(request.arg)
    days = [date(2024, 1, 2), date(2024, 1, 3), date(2024, 1, 4)]
    return pl.DataFrame({"date": days, "open": [price] * 3, "high": [price] * 3, "low": [price] * 3,
                         "close": [price] * 3, "volume": [float(request.seed)] * 3}, schema=BARS_SCHEMA)
"""


@pytest.fixture
def add_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], None]]:
    """``add_source(name, code)`` writes a module that the registry finds as
    ``tasks.sources.NAME`` (its folder joins the package's search path)."""
    monkeypatch.setattr(sources, "__path__", [*sources.__path__, str(tmp_path)])
    sources._sources.cache_clear()
    added: list[str] = []

    def add(name: str, code: str) -> None:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(code))
        importlib.invalidate_caches()
        sources._sources.cache_clear()
        added.append(f"tasks.sources.{name}")

    yield add
    for name in added:
        sys.modules.pop(name, None)
    sources._sources.cache_clear()  # the next call rediscovers, after monkeypatch restores __path__


# --- names ----------------------------------------------------------------------------


def test_known_sources_are_discovered_from_the_package() -> None:
    assert known_sources() == ["sample", "synthetic", "yfinance", "files:DIR"]
    assert {name: m.__name__ for name, m in sources._sources().items()} == {
        "files": "tasks.sources.files", "sample": "tasks.sources.sample",
        "synthetic": "tasks.sources.synthetic", "yfinance": "tasks.sources.yfinance"}


@pytest.mark.parametrize("source", ["sample", "synthetic", "yfinance", "files:/data", "files:~/bars"])
def test_check_source_returns_a_known_source(source: str) -> None:
    assert check_source(source) == source


@pytest.mark.parametrize("source", ["quandl", "files:", "files", "sample:x", "yfinance:", "", "Sample"])
def test_unknown_source_names_it_and_the_known_ones(source: str) -> None:
    known = "use one of sample, synthetic, yfinance, files:DIR"
    with pytest.raises(SourceError) as err:
        check_source(source)
    assert str(err.value) == f"unknown source {source!r}; {known}"
    with pytest.raises(SourceError) as err:
        load_bars("aapl", source)
    assert str(err.value) == f"AAPL: unknown source {source!r}; {known}"
    assert err.value.retryable is False


def test_source_error_keeps_retryable_through_pickle_and_copy() -> None:
    error = SourceError("AAA: source yfinance: the network is the problem", retryable=True)
    for carried in (pickle.loads(pickle.dumps(error)), copy.deepcopy(error)):
        assert (type(carried), str(carried), carried.retryable) == (SourceError, str(error), True)


# --- adding a source is adding a file --------------------------------------------------


def test_a_new_module_is_a_new_source(add_source: Callable[[str, str], None]) -> None:
    add_source("constant", CONSTANT)
    assert known_sources() == ["sample", "synthetic", "yfinance", "constant:PRICE", "files:DIR"]
    bars = load_bars("acme", "constant:2.5", start=date(2024, 1, 3), seed=7)
    assert bars.equals(pl.DataFrame(
        {"date": [date(2024, 1, 3), date(2024, 1, 4)], "open": [2.5, 2.5], "high": [2.5, 2.5],
         "low": [2.5, 2.5], "close": [2.5, 2.5], "volume": [7.0, 7.0]}, schema=BARS_SCHEMA))
    with pytest.raises(SourceError, match=r"unknown source 'constant'; use one of .*constant:PRICE, files:DIR"):
        check_source("constant")  # it takes an argument


def test_a_source_that_breaks_the_contract_is_stopped(add_source: Callable[[str, str], None]) -> None:
    wrong = '\n_load = load\nload = lambda request: _load(request).with_columns(pl.col("volume").cast(pl.Int64))\n'
    add_source("intvolume", CONSTANT.replace('"constant:PRICE"', '"intvolume:PRICE"') + wrong)
    broken = r"^ACME: bars break the Bars contract: volume is Int64, need Float64\. To fix"
    with pytest.raises(ValueError, match=broken):
        load_bars("ACME", "intvolume:1")


def test_a_module_without_source_or_load_is_named(add_source: Callable[[str, str], None]) -> None:
    add_source("helper", "def load(request):\n    return None\n")
    with pytest.raises(TypeError, match=r"^tasks\.sources\.helper: a source module needs SOURCE"):
        check_source("sample")


def test_two_modules_cannot_serve_one_name(add_source: Callable[[str, str], None]) -> None:
    add_source("zzsample", CONSTANT.replace('"constant:PRICE"', '"sample"'))
    already = r"tasks\.sources\.zzsample: source 'sample' is already served by tasks\.sources\.sample; rename one"
    with pytest.raises(TypeError, match=already):
        known_sources()


# --- what load_bars does for every source -----------------------------------------------


@pytest.mark.parametrize("source", ["files:DIR", "yfinance", "sample", "synthetic"])
@pytest.mark.parametrize("bad", ["../x", "a/b", "A" * 21, ""])
def test_bad_symbol_raises_before_any_file_access(
    bad: str, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_io(*args: object, **kwargs: object) -> None:
        raise AssertionError("touched the file system or network before validating the symbol")

    for name in ("iterdir", "exists", "is_dir", "open", "stat"):
        monkeypatch.setattr(Path, name, no_io)
    for name in ("read_csv", "read_parquet", "scan_parquet", "read_parquet_metadata"):
        monkeypatch.setattr(pl, name, no_io)
    monkeypatch.setattr(yfs, "_download", no_io)
    source = source.replace("DIR", str(tmp_path))
    with pytest.raises(ValueError, match="invalid symbol"):
        load_bars(bad, source, cache_dir=tmp_path)


def test_start_end_days_select_inclusive_range_then_last_rows() -> None:
    bars = load_bars("IBM", "sample", start=date(2010, 1, 4), end=date(2010, 1, 8))
    assert bars["date"].to_list() == [date(2010, 1, d) for d in (4, 5, 6, 7, 8)]
    last = load_bars("IBM", "sample", end=date(2010, 1, 8), days=2)
    assert last["date"].to_list() == [date(2010, 1, 7), date(2010, 1, 8)]
    with pytest.raises(SourceError, match="IBM: no bars .* 2000-03-01 to 2013-03-01"):
        load_bars("IBM", "sample", start=date(2020, 1, 1))
    with pytest.raises(ValueError, match="start 2011-01-01 is after end 2010-01-01"):
        load_bars("IBM", "sample", start=date(2011, 1, 1), end=date(2010, 1, 1))
    with pytest.raises(ValueError, match="IBM: days=0; use a positive number of rows"):
        load_bars("IBM", "sample", days=0)


# --- the files the fetch cache key covers ---------------------------------------------


def test_source_code_files_are_the_package_bars_atomic_and_sample_data() -> None:
    expected = [TASKS / "__init__.py", TASKS / "atomic.py", TASKS / "bars.py",
                TASKS / "data" / "sample_bars.parquet", *(TASKS / "sources").glob("*.py")]
    assert source_code_files() == sorted(expected)
    assert {p.name for p in (TASKS / "sources").glob("*.py")} == {
        "__init__.py", "_base.py", "files.py", "sample.py", "synthetic.py", "yfinance.py"}


def test_every_tasks_module_the_sources_import_is_hashed(tmp_path: Path) -> None:
    """What a fresh interpreter has imported from ``tasks`` after loading from
    the sources must all be in the hashed files: the import reading found it."""
    (tmp_path / "ACME.csv").write_text("Date,Open,High,Low,Close,Volume\n2024-01-02,1,2,1,2,5\n")
    script = textwrap.dedent(f"""
        import json, sys
        import tasks.sources as s
        for source in ("sample", "synthetic", {f"files:{tmp_path}"!r}):
            s.load_bars("IBM" if source == "sample" else "ACME", source)
        s.known_sources()
        print(json.dumps({{n: m.__file__ for n, m in sys.modules.items() if n.split(".")[0] == "tasks"}}))
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    imported = json.loads(run.stdout)
    assert {"tasks.bars", "tasks.atomic", "tasks.sources.yfinance", "tasks.sources._base"} <= set(imported)
    assert {Path(f).resolve() for f in imported.values()} <= set(source_code_files())


def test_an_import_inside_a_function_is_found(add_source: Callable[[str, str], None]) -> None:
    assert TASKS / "windows.py" not in source_code_files()
    add_source("lazy", CONSTANT.replace('"constant:PRICE"', '"lazy"')
               + "\n\ndef later():\n    from tasks.windows import make_windows\n    return make_windows\n")
    files = source_code_files()
    assert TASKS / "windows.py" in files and TASKS / "sources" / "sample.py" in files
    assert any(p.name == "lazy.py" for p in files)


def test_source_code_hash_is_the_same_in_any_checkout(tmp_path: Path) -> None:
    """Paths enter the digest relative to the project root, so a copy of the
    project elsewhere (another machine, worktree or container) shares the fetch cache."""
    shutil.copytree(TASKS, tmp_path / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    script = "import tasks.sources as s; print(s.source_code_files()[0], s.source_code_hash())"
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    first, digest = run.stdout.split()
    assert Path(first) == tmp_path / "tasks" / "__init__.py"  # the copy was hashed, not this checkout
    assert digest == source_code_hash()
    (tmp_path / "tasks" / "atomic.py").write_text((TASKS / "atomic.py").read_text() + "# edited\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert run.stdout.split()[1] != digest
