"""Bundled datasets load as R saw them; the command line prints lme4's numbers."""

from __future__ import annotations

import re

import pandas as pd
import pytest

import jaxlmm
from conftest import REF, load_fit_reference
from jaxlmm import cli

FACTOR_CASES = {
    "sleepstudy": "sleepstudy_slope",
    "dyestuff": "dyestuff",
    "dyestuff2": "dyestuff2_singular",
    "penicillin": "penicillin_crossed",
    "pastes": "pastes_nested",
    "insteval": "insteval_crossed",
}


@pytest.mark.parametrize("name", sorted(FACTOR_CASES))
def test_datasets_match_reference_csv_and_levels(name):
    df = jaxlmm.datasets.load(name)
    factors = load_fit_reference(FACTOR_CASES[name])["factors"]
    raw = pd.read_csv(REF / "data" / f"{name}.csv", dtype={c: str for c in factors})
    assert df.shape == raw.shape
    for col in raw.columns:
        if col in factors:
            assert list(df[col].cat.categories) == factors[col]
            assert (df[col].astype(str).to_numpy() == raw[col].to_numpy()).all()
        else:
            assert (df[col].to_numpy() == raw[col].to_numpy()).all()


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(jaxlmm.DataError, match="sleepstudy"):
        jaxlmm.datasets.load("sleepstudyy")


def _number_after(label, text):
    m = re.search(re.escape(label) + r"\s*(-?[0-9.]+)", text)
    assert m, f"'{label}' not in output"
    return float(m.group(1))


def test_cli_prints_sleepstudy_summary(capsys):
    assert cli.main(["fit", "Reaction ~ Days + (Days | Subject)", "--data", "sleepstudy"]) == 0
    out = capsys.readouterr().out
    ref = load_fit_reference("sleepstudy_slope")["REML"]
    assert _number_after("REML criterion at convergence:", out) == pytest.approx(ref["objective"], abs=1e-3)
    assert _number_after("(Intercept)", out.split("Fixed effects:")[1]) == pytest.approx(ref["beta"][0], abs=1e-3)
    assert "Number of obs: 180, groups:  Subject, 18" in out


def test_cli_ml_from_csv(tmp_path, capsys):
    path = tmp_path / "dye.csv"
    jaxlmm.datasets.load("dyestuff").to_csv(path, index=False)
    assert cli.main(["fit", "Yield ~ 1 + (1 | Batch)", "--data", str(path), "--ml"]) == 0
    out = capsys.readouterr().out
    ref = load_fit_reference("dyestuff")["ML"]
    assert "maximum likelihood" in out
    for key in ("aic", "bic", "loglik", "objective"):
        assert f"{ref[key]:.4f}" in out


def test_cli_reports_bad_input_without_traceback(capsys):
    assert cli.main(["fit", "Reaction ~ Dayz + (1 | Subject)", "--data", "sleepstudy"]) == 2
    err = capsys.readouterr().err
    assert "Dayz" in err and "Days" in err and "Traceback" not in err
