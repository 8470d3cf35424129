"""The command line: --version, fit/bootstrap/pbtest/confint, their formats, data files, errors, warnings."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import get_fit

import jaxlmm
from jaxlmm import cli

SLOPE = "Reaction ~ Days + (Days | Subject)"
DYE0, DYE1 = "Yield ~ 1", "Yield ~ 1 + (1 | Batch)"


def _run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_version_in_process_and_as_a_program(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"jaxlmm {jaxlmm.__version__}"
    done = subprocess.run(
        [sys.executable, "-m", "jaxlmm.cli", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == f"jaxlmm {jaxlmm.__version__}"


def test_fit_json_equals_the_fit(capsys):
    rc, out, err = _run(capsys, "fit", SLOPE, "--data", "sleepstudy", "--format", "json")
    assert rc == 0 and err == ""
    got = json.loads(out)
    want = get_fit(SLOPE, "sleepstudy").to_dict()
    assert got.keys() == want.keys()
    for key in ("objective", "loglik", "aic", "bic", "sigma"):
        assert got[key] == pytest.approx(want[key], rel=1e-10)
    assert got["fixef"] == pytest.approx(want["fixef"], rel=1e-8)
    assert got["fixef"]["Days"] == pytest.approx(10.467286, rel=1e-6)  # lme4
    assert got["ngroups"] == {"Subject": 18} and got["nobs"] == 180 and got["reml"] is True


def test_fit_csv_is_the_tidy_table(capsys):
    rc, out, _ = _run(capsys, "fit", SLOPE, "--data", "sleepstudy", "--format", "csv")
    assert rc == 0
    got = pd.read_csv(io.StringIO(out))
    want = get_fit(SLOPE, "sleepstudy").tidy()
    assert list(got.columns) == list(want.columns)
    assert list(got["term"]) == list(want["term"])
    np.testing.assert_allclose(got["estimate"], want["estimate"], rtol=1e-8)
    np.testing.assert_allclose(got["df"], want["df"], rtol=1e-6)


@pytest.mark.parametrize("sep, given", [("\t", None), (";", None), (";", ";"), ("\t", "tab")])
def test_data_file_separators_sniffed_or_given(tmp_path, capsys, sep, given):
    path = tmp_path / "dye.txt"
    jaxlmm.datasets.load("dyestuff").to_csv(path, sep=sep, index=False)
    argv = ["fit", DYE1, "--data", str(path), "--ml", "--format", "json"]
    rc, out, err = _run(capsys, *argv, *(["--sep", given] if given else []))
    assert rc == 0, err
    got = json.loads(out)
    want = get_fit(DYE1, "dyestuff", reml=False)
    assert got["objective"] == pytest.approx(want.objective, rel=1e-10)
    assert got["data"] == "dye.txt" and got["ngroups"] == {"Batch": 6}


def test_bootstrap_summary_of_the_replicates(capsys):
    rc, out, _ = _run(capsys, "bootstrap", DYE1, "--data", "dyestuff", "--n", "20", "--seed", "1", "--format", "json")
    assert rc == 0
    got = json.loads(out)
    fit = get_fit(DYE1, "dyestuff")
    boot = jaxlmm.bootstrap(fit, n=20, seed=1, progress=False)
    ok = boot.table[boot.table["converged"]]
    ci = boot.confint(level=0.95)
    assert (got["n"], got["seed"], got["n_used"] + got["n_failed"]) == (20, 1, 20)
    rows = {r["parameter"]: r for r in got["parameters"]}
    assert list(rows) == ["sd_(Intercept)|Batch", "sigma", "(Intercept)"]
    assert rows["(Intercept)"]["estimate"] == pytest.approx(1527.5, rel=1e-10)
    assert rows["sigma"]["estimate"] == pytest.approx(fit.sigma, rel=1e-8)
    for name, r in rows.items():
        assert r["mean"] == pytest.approx(ok[name].mean(), rel=1e-8)
        assert r["sd"] == pytest.approx(ok[name].std(ddof=1), rel=1e-8)
        assert [r["lower"], r["upper"]] == pytest.approx(list(ci.loc[name]), rel=1e-8)
    rc, out, _ = _run(capsys, "bootstrap", DYE1, "--data", "dyestuff", "--n", "20", "--seed", "1")
    assert "20 replicates, seed 1" in out and "sd_(Intercept)|Batch" in out


def test_pbtest_equals_pb_test(capsys):
    rc, out, _ = _run(capsys, "pbtest", DYE0, DYE1, "--data", "dyestuff", "--n", "20", "--seed", "2", "--format", "json")
    assert rc == 0
    got = json.loads(out)
    res = jaxlmm.pb_test(get_fit(DYE0, "dyestuff", reml=False), get_fit(DYE1, "dyestuff", reml=False),
                         n=20, seed=2, progress=False)
    assert got["lrt"] == pytest.approx(res.lrt, rel=1e-8)
    assert got["lrt"] == pytest.approx(5.4028, abs=1e-4)  # lme4: anova's Chisq
    assert got["p_value"] == pytest.approx(res.p_value) and got["df"] == 1
    assert got["p_chisq"] == pytest.approx(res.p_chisq, rel=1e-8)
    rc, out, _ = _run(capsys, "pbtest", DYE0, DYE1, "--data", "dyestuff", "--n", "20", "--seed", "2")
    assert f"LRT = {res.lrt:.4f} on 1 df" in out


def test_confint_wald_and_boot(capsys):
    rc, out, _ = _run(capsys, "confint", SLOPE, "--data", "sleepstudy", "--method", "Wald", "--level", "0.9",
                      "--format", "csv")
    assert rc == 0
    got = pd.read_csv(io.StringIO(out)).set_index("parameter")
    want = get_fit(SLOPE, "sleepstudy").confint(method="wald", level=0.9)
    assert list(got.index) == list(want.index)
    np.testing.assert_allclose(got.loc[["(Intercept)", "Days"]], want.loc[["(Intercept)", "Days"]], rtol=1e-8)
    rc, out, _ = _run(capsys, "confint", DYE1, "--data", "dyestuff", "--method", "boot", "--n", "20", "--seed", "1",
                      "--format", "json")
    got = json.loads(out)
    want = jaxlmm.bootstrap(get_fit(DYE1, "dyestuff"), n=20, seed=1, progress=False).confint()
    assert got["method"] == "bootstrap"
    assert [r["parameter"] for r in got["intervals"]] == list(want.index)
    np.testing.assert_allclose([[r["lower"], r["upper"]] for r in got["intervals"]], want.to_numpy(), rtol=1e-8)


@pytest.mark.parametrize(
    "argv, usage",
    [
        (["bootstrap", "--data", "dyestuff"], "usage: jaxlmm bootstrap"),
        (["confint", DYE1, "--data", "dyestuff", "--method", "bca"], "usage: jaxlmm confint"),
        (["pbtest", DYE0, "--data", "dyestuff"], "usage: jaxlmm pbtest"),
        (["fit", DYE1], "usage: jaxlmm fit"),
        (["bootstrap", DYE1, "--data", "dyestuff", "--n", "0"], "usage: jaxlmm bootstrap"),
    ],
)
def test_usage_errors_print_the_subcommand_usage(capsys, argv, usage):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith(usage)


def test_input_errors_exit_2_with_one_line(capsys, tmp_path):
    rc, out, err = _run(capsys, "fit", DYE1, "--data", str(tmp_path / "missing.csv"))
    assert rc == 2 and out == "" and err.startswith("jaxlmm: error: --data") and "Traceback" not in err
    rc, _, err = _run(capsys, "pbtest", DYE1, DYE0, "--data", "dyestuff", "--n", "5")
    assert rc == 2 and err.startswith("jaxlmm: error: The null model must have fewer parameters")


def test_warnings_are_one_clean_line(capsys, tmp_path):
    rc, out, err = _run(capsys, "fit", DYE1, "--data", "dyestuff2")
    assert rc == 0 and "Random effects:" in out
    assert err.splitlines() == ["jaxlmm: warning: SingularFitWarning: boundary (singular) fit: see fit.varcorr."]
    path = tmp_path / "dye.csv"
    dye = jaxlmm.datasets.load("dyestuff").astype({"Yield": float})
    dye.loc[0, "Yield"] = np.nan
    dye.to_csv(path, index=False)
    rc, out, err = _run(capsys, "fit", "Yield ~ 1", "--data", str(path), "--format", "json")
    assert rc == 0 and json.loads(out)["n_dropped"] == 1
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxlmm: warning: MissingDataWarning: 1 row(s) with missing")
