"""The command line: --version, fit/bootstrap/pbtest/confint, their formats, data files, errors, warnings,
and lme4's numbers in its printed summary."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import cli
from models import get_fit
from oracle import DYE, DYE0, DYE1, ROOT, SLOPE, load_fit_reference


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


# ---- the command line's --data ----------------------------------------------------------------


def _cli(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    "name,content,words",
    [
        ("bin.csv", bytes(range(256)) * 8, "binary"),
        ("empty.csv", b"", "empty file"),
        ("latin.csv", "Yield,Batch\n1,\xe9\n".encode("latin-1"), "not UTF-8"),
        ("blank.csv", b"\n\n\n", "Cannot read"),
        ("header.csv", b"Yield,Batch\n", "no rows"),
        ("passwd", b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
                   b"bin:x:2:2:bin:/bin:/usr/sbin/nologin\n", "Column 'Yield'"),
        ("fake.parquet", b"PAR1 not really", "Parquet"),
    ],
)
def test_unreadable_data_files_exit_2(tmp_path, capsys, name, content, words):
    import importlib.util

    if name.endswith(".parquet") and importlib.util.find_spec("pyarrow") is not None:
        words = "Cannot read"
    path = tmp_path / name
    path.write_bytes(content)
    rc, out, err = _cli(capsys, "fit", DYE, "--data", str(path))
    assert rc == 2 and out == "", err
    assert err.startswith("jaxlmm: error: ") and words in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_parquet_without_pyarrow_names_the_extra(tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow":
            raise ImportError("No module named 'pyarrow'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1....PAR1")
    rc, _, err = _cli(capsys, "fit", DYE, "--data", str(path))
    assert rc == 2 and "optional extra 'parquet'" in err and 'pip install ".[parquet]"' in err
    extras = (ROOT / "pyproject.toml").read_text()
    assert 'parquet = ["pyarrow>=' in extras


def test_a_file_on_disk_wins_over_a_bundled_name(tmp_path, capsys, monkeypatch):
    other = jaxlmm.datasets.load("dyestuff2")
    (tmp_path / "dyestuff").write_text(other.to_csv(index=False))
    folder = tmp_path / "sleepstudy"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    rc, out, _ = _cli(capsys, "fit", DYE, "--data", "dyestuff", "--ml", "--format", "json")
    mine = json.loads(out)
    rc2, out2, _ = _cli(capsys, "fit", DYE, "--data", "bundled:dyestuff", "--ml", "--format", "json")
    bundled = json.loads(out2)
    assert rc == rc2 == 0
    assert mine["data"] == "dyestuff" and bundled["data"] == "dyestuff"
    ref2 = get_fit(DYE, "dyestuff2", reml=False)
    ref = get_fit(DYE, "dyestuff", reml=False)
    assert mine["fixef"]["(Intercept)"] == pytest.approx(ref2.fixef.iloc[0], rel=1e-8)
    assert bundled["fixef"]["(Intercept)"] == pytest.approx(ref.fixef.iloc[0], rel=1e-8)
    # a folder of a bundled dataset's name is not a file: the bundled dataset
    rc3, _, _ = _cli(capsys, "fit", SLOPE, "--data", "sleepstudy", "--format", "json")
    assert rc3 == 0
    rc4, _, err = _cli(capsys, "fit", DYE, "--data", "bundled:nope")
    assert rc4 == 2 and "no bundled dataset 'nope'" in err


# ---- lme4's numbers in the printed summary ---------------------------------------------------


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


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_the_status_line_shows_on_a_terminal_only_and_is_erased(tty):
    from jaxlmm.cli import status

    stream = _Stream(tty)
    with status("fitting y ~ x", stream):
        shown = stream.getvalue()
    assert shown == ("jaxlmm: fitting y ~ x ..." if tty else "")
    assert stream.getvalue() == (shown + "\r\033[K" if tty else "")
