"""Bundled datasets (jaxlmm.datasets) load as R saw them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from oracle import load_fit_reference, load_json


# lme4's datasets as R holds them (tests/reference/make_reference.R)
LME4_DATASETS = load_json("datasets.json")["datasets"]


FACTOR_CASES = {
    "sleepstudy": "sleepstudy_slope",
    "dyestuff": "dyestuff",
    "dyestuff2": "dyestuff2_singular",
    "penicillin": "penicillin_crossed",
    "pastes": "pastes_nested",
    "insteval": "insteval_crossed",
}


def test_every_bundled_dataset_has_an_lme4_record():
    assert sorted(LME4_DATASETS) == sorted(jaxlmm.datasets.NAMES) == sorted(FACTOR_CASES)


@pytest.mark.parametrize("name", sorted(FACTOR_CASES))
def test_bundled_dataset_is_lme4s(name):
    """Rows, columns, level order and counts, sums and row-order-sensitive sums as R computed them."""
    df = jaxlmm.datasets.load(name)
    ref = LME4_DATASETS[name]
    assert list(df.columns) == ref["columns"]
    assert len(df) == ref["nrow"]
    row = np.arange(1, len(df) + 1, dtype=np.float64)  # R's 1-based row numbers
    for col, s in ref["summary"].items():
        if "levels" in s:
            assert isinstance(df[col].dtype, pd.CategoricalDtype), col
            assert list(df[col].cat.categories) == s["levels"], col
            assert df[col].value_counts(sort=False).tolist() == s["counts"], col
            codes = df[col].cat.codes.to_numpy()
            assert (codes >= 0).all(), col  # no value outside the levels
            assert np.sum(row * (codes + 1)) == s["code_weighted_sum"], col
        else:
            x = df[col].to_numpy(dtype=np.float64)
            assert np.sum(x) == pytest.approx(s["sum"], rel=1e-12, abs=1e-9), col
            assert np.sum(x**2) == pytest.approx(s["sum_squares"], rel=1e-12), col
            assert np.sum(row * x) == pytest.approx(s["weighted_sum"], rel=1e-12), col
    # the fits were made on these factor levels too
    factors = load_fit_reference(FACTOR_CASES[name])["factors"]
    assert {c: list(df[c].cat.categories) for c in factors} == factors


def test_reordered_rows_are_caught():
    """The row-weighted sums see a swap of two rows that plain sums and counts miss."""
    df = jaxlmm.datasets.load("sleepstudy")
    ref = LME4_DATASETS["sleepstudy"]["summary"]
    swapped = df.iloc[[1, 0, *range(2, len(df))]]
    row = np.arange(1, len(df) + 1, dtype=np.float64)
    x = swapped["Reaction"].to_numpy()
    assert np.sum(x) == pytest.approx(ref["Reaction"]["sum"], rel=1e-12)
    assert np.sum(row * x) != pytest.approx(ref["Reaction"]["weighted_sum"], rel=1e-12)


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(jaxlmm.DataError, match="sleepstudy"):
        jaxlmm.datasets.load("sleepstudyy")
