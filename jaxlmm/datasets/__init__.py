"""Bundled datasets, loaded as R saw them (factor columns as ordered Categoricals).

sleepstudy (lme4), dyestuff and dyestuff2 (Davies & Goldsmith), penicillin,
pastes, and insteval (lme4's InstEval, 73,421 rows, gzip-compressed).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import pandas as pd

from ..errors import DataError, closest_name

NAMES = ("sleepstudy", "dyestuff", "dyestuff2", "penicillin", "pastes", "insteval")


@lru_cache(maxsize=1)
def _factors() -> dict:
    return json.loads(resources.files(__package__).joinpath("data/factors.json").read_text())


def _file(name: str):
    base = resources.files(__package__).joinpath("data")
    plain = base.joinpath(f"{name}.csv")
    return plain if plain.is_file() else base.joinpath(f"{name}.csv.gz")


def load(name: str) -> pd.DataFrame:
    """Load a bundled dataset by name; factor columns keep R's level order."""
    key = str(name).lower()
    if key not in NAMES:
        raise DataError(f"No bundled dataset '{name}'; available: {', '.join(NAMES)}.{closest_name(key, NAMES)}")
    factors = _factors()[key]
    path = _file(key)
    with resources.as_file(path) as p:
        df = pd.read_csv(p, dtype={c: str for c in factors}, compression="infer")
    for col, levels in factors.items():
        df[col] = pd.Categorical(df[col], categories=levels)
    df.attrs["name"] = key
    return df
