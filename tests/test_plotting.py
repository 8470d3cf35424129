"""Figures of fitted models: the data drawn equals the fit's values and lme4's.

Rendered with the Agg backend; every test reads the artists back (points,
lines, titles, panel counts) and compares them with the fit, with lme4's
reference values, or with an independent computation (scipy's normal quantiles).
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import jaxlmm
from models import get_fit
from oracle import load_fit_reference, load_json
from jaxlmm.plotting import plot_bootstrap, plot_profile
from jaxlmm.plotting.diagnostics import ppoints, qq_line
from jaxlmm.plotting.inference import profile_interval

SLEEP = "Reaction ~ Days + (Days | Subject)"
SLEEP_UNCORR = "Reaction ~ Days + (Days || Subject)"
PENICILLIN = "diameter ~ 1 + (1 | plate) + (1 | sample)"


@pytest.fixture(scope="module")
def sleep():
    return get_fit(SLEEP, "sleepstudy")


@pytest.fixture(scope="module")
def penicillin():
    return get_fit(PENICILLIN, "penicillin")


def lme4_ranef(case: str, group: str, term: str) -> pd.DataFrame:
    """lme4's conditional modes and SDs of one (group, term), indexed by level."""
    r = pd.DataFrame(load_fit_reference(case)["REML"]["ranef"])
    r = r[(r["grpvar"] == group) & (r["term"] == term)]
    return r.set_index("grp")[["condval", "condsd"]]


def render(fig):
    """Draw the figure once (as saving would): catches layout and artist errors."""
    fig.canvas.draw()
    return fig


# ---- residuals vs fitted --------------------------------------------------


@pytest.mark.parametrize("scaled", [False, True])
def test_residuals_plot_draws_fitted_and_residuals(sleep, scaled):
    fig = render(sleep.plot.residuals(scaled=scaled))
    (ax,) = fig.axes
    xy = ax.collections[0].get_offsets()
    assert xy.shape == (180, 2)
    np.testing.assert_allclose(xy[:, 0], sleep.fitted, rtol=1e-12)
    np.testing.assert_allclose(xy[:, 1], sleep.residuals(scaled=scaled), rtol=1e-12)
    # independent check of what is drawn: fitted + residual * scale = response
    scale = sleep.sigma if scaled else 1.0
    np.testing.assert_allclose(xy[:, 0] + scale * xy[:, 1], sleep.design.y, rtol=1e-12)


# ---- normal QQ --------------------------------------------------------------


@pytest.mark.parametrize("n", [6, 10, 11, 180])
def test_ppoints_match_scipy_plotting_positions(n):
    # R's ppoints: Blom's a = 3/8 up to 10 points, Hazen's a = 1/2 beyond
    a = 3 / 8 if n <= 10 else 1 / 2
    ranks = np.arange(1, n + 1)
    np.testing.assert_allclose(ppoints(n), stats.mstats.plotting_positions(ranks, alpha=a, beta=a), rtol=1e-12)


def test_qq_residuals_points_and_line(sleep):
    fig = render(sleep.plot.qq())
    (ax,) = fig.axes
    pts, line = ax.lines
    r = sleep.residuals()
    np.testing.assert_allclose(pts.get_ydata(), np.sort(r), rtol=1e-12)
    np.testing.assert_allclose(pts.get_xdata(), stats.norm.ppf((np.arange(1, 181) - 0.5) / 180), rtol=1e-10)
    # qqline through the quartile pairs (R's qqline)
    q1, q3 = np.percentile(r, [25, 75])
    slope = (q3 - q1) / (stats.norm.ppf(0.75) - stats.norm.ppf(0.25))
    assert line.get_slope() == pytest.approx(slope, rel=1e-10)
    assert line.get_xy1()[1] == pytest.approx(q1 - slope * stats.norm.ppf(0.25), rel=1e-10)
    assert qq_line(r) == pytest.approx((q1 - slope * stats.norm.ppf(0.25), slope), rel=1e-10)


def test_qq_random_effects_one_panel_per_term(sleep):
    fig = render(sleep.plot.qq("Subject"))
    assert [ax.get_title() for ax in fig.axes] == ["Subject: (Intercept)", "Subject: Days"]
    for ax, term in zip(fig.axes, ["(Intercept)", "Days"]):
        ref = lme4_ranef("sleepstudy_slope", "Subject", term)
        np.testing.assert_allclose(ax.lines[0].get_ydata(), np.sort(ref["condval"]), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(ax.lines[0].get_xdata(), stats.norm.ppf((np.arange(1, 19) - 0.5) / 18))


def test_qq_uncorrelated_terms_share_the_group(sleep):
    fit = get_fit(SLEEP_UNCORR, "sleepstudy")
    fig = render(fit.plot.qq("Subject"))
    assert len(fig.axes) == 2
    for ax, term in zip(fig.axes, ["(Intercept)", "Days"]):
        ref = lme4_ranef("sleepstudy_uncorr", "Subject", term)
        np.testing.assert_allclose(ax.lines[0].get_ydata(), np.sort(ref["condval"]), rtol=1e-3, atol=1e-3)


def test_qq_small_group_uses_blom_positions(penicillin):
    fig = render(penicillin.plot.qq("sample"))
    x = fig.axes[0].lines[0].get_xdata()
    np.testing.assert_allclose(x, stats.norm.ppf((np.arange(1, 7) - 3 / 8) / (6 + 1 - 3 / 4)), rtol=1e-10)


# ---- caterpillar ------------------------------------------------------------


def _caterpillar_panel(ax):
    """Points (value, position), interval ends and tick labels drawn in one panel."""
    pts = ax.lines[0]
    seg = np.array([s[:, 0] for s in ax.collections[0].get_segments()])
    labels = [t.get_text() for t in ax.get_yticklabels()]
    return pts.get_xdata(), pts.get_ydata(), seg, labels


def test_caterpillar_sorted_with_lme4_intervals(sleep):
    fig = render(sleep.plot.caterpillar(level=0.95))
    assert [ax.get_title() for ax in fig.axes] == ["Subject: (Intercept)", "Subject: Days"]
    ref_int = lme4_ranef("sleepstudy_slope", "Subject", "(Intercept)")
    order = ref_int["condval"].sort_values().index  # both panels follow the intercepts' order
    z = stats.norm.ppf(0.975)
    for ax, term in zip(fig.axes, ["(Intercept)", "Days"]):
        x, pos, seg, labels = _caterpillar_panel(ax)
        ref = lme4_ranef("sleepstudy_slope", "Subject", term).loc[order]
        assert labels == list(order)
        np.testing.assert_array_equal(pos, np.arange(18))
        np.testing.assert_allclose(x, ref["condval"], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(seg[:, 0], ref["condval"] - z * ref["condsd"], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(seg[:, 1], ref["condval"] + z * ref["condsd"], rtol=1e-3, atol=1e-3)
    x0 = _caterpillar_panel(fig.axes[0])[0]
    assert np.all(np.diff(x0) >= 0)


def test_caterpillar_all_groups_and_level(penicillin):
    fig = render(penicillin.plot.caterpillar(level=0.8))
    assert [ax.get_title() for ax in fig.axes] == ["plate: (Intercept)", "sample: (Intercept)"]
    z = stats.norm.ppf(0.9)
    for ax, group in zip(fig.axes, ["plate", "sample"]):
        x, _, seg, labels = _caterpillar_panel(ax)
        # balanced design: tied modes, so check the order through the values
        ref = lme4_ranef("penicillin_crossed", group, "(Intercept)").loc[labels]
        assert sorted(labels) == sorted(penicillin.design.terms[0 if group == "plate" else 1].levels)
        assert np.all(np.diff(x) >= 0)
        np.testing.assert_allclose(x, ref["condval"], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(seg[:, 1] - seg[:, 0], 2 * z * ref["condsd"], rtol=1e-3)
    one = render(penicillin.plot.caterpillar("sample"))
    assert len(one.axes) == 1


# ---- per-group panels -------------------------------------------------------


def test_groups_eighteen_panels_with_lme4_lines(sleep):
    fig = render(sleep.plot.groups())
    ref = load_fit_reference("sleepstudy_slope")["REML"]
    beta0, beta1 = ref["beta"]
    b0 = lme4_ranef("sleepstudy_slope", "Subject", "(Intercept)")["condval"]
    b1 = lme4_ranef("sleepstudy_slope", "Subject", "Days")["condval"]
    df = jaxlmm.datasets.load("sleepstudy")
    assert len(fig.axes) == 18
    assert [ax.get_title() for ax in fig.axes] == list(df["Subject"].cat.categories)
    assert len(fig.axes[0].get_shared_x_axes().get_siblings(fig.axes[0])) == 18
    for ax in fig.axes:
        subj = ax.get_title()
        rows = df[df["Subject"] == subj].sort_values("Days")
        data, own, pop = ax.lines
        days = rows["Days"].to_numpy(dtype=float)
        for line in (data, own, pop):
            np.testing.assert_array_equal(line.get_xdata(), days)
        np.testing.assert_allclose(data.get_ydata(), rows["Reaction"], rtol=1e-12)
        own_ref = beta0 + b0[subj] + (beta1 + b1[subj]) * days
        np.testing.assert_allclose(own.get_ydata(), own_ref, rtol=1e-5)
        np.testing.assert_allclose(pop.get_ydata(), beta0 + beta1 * days, rtol=1e-5)


def test_groups_layout_and_column_from_data(sleep):
    fig = render(sleep.plot.groups(ncols=4))
    assert len(fig.axes) == 18  # 5 x 4 grid, the two spare cells removed
    assert fig.axes[0].get_subplotspec().get_gridspec().get_geometry() == (5, 4)
    df = jaxlmm.datasets.load("sleepstudy").assign(Hours=lambda d: 24.0 * d["Days"])
    fig = render(sleep.plot.groups(x="Hours", data=df))
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_xdata(), 24.0 * np.arange(10))


def test_groups_of_a_crossed_factor(penicillin):
    # intercept-only model, no covariate: x must be named; 6 samples, 4 columns
    fig = render(penicillin.plot.groups(x="plate_code", group="sample", ncols=4, data=_penicillin_codes()))
    assert len(fig.axes) == 6
    df = _penicillin_codes()
    mu = load_fit_reference("penicillin_crossed")["REML"]["beta"]
    for ax in fig.axes:
        rows = df[df["sample"] == ax.get_title()]
        assert len(ax.lines[0].get_xdata()) == len(rows) == 24
        np.testing.assert_allclose(np.sort(ax.lines[0].get_ydata()), np.sort(rows["diameter"]))
        np.testing.assert_allclose(ax.lines[2].get_ydata(), mu, rtol=1e-5)


def _penicillin_codes():
    df = jaxlmm.datasets.load("penicillin")
    return df.assign(plate_code=df["plate"].cat.codes.astype(float))


# ---- bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda f: f.plot.qq("Subjet"), "No random-effect group 'Subjet'.*Did you mean 'Subject'"),
        (lambda f: f.plot.caterpillar("Days"), "No random-effect group 'Days'"),
        (lambda f: f.plot.caterpillar(level=1.5), "level must lie strictly between 0 and 1"),
        (lambda f: f.plot.groups(x="Dayz"), "Column 'Dayz' is not a model column.*Did you mean 'Days'"),
        (lambda f: f.plot.groups(group="Subjct"), "No random-effect group 'Subjct'"),
        (lambda f: f.plot.groups(ncols=0), "ncols must be a positive integer"),
        (lambda f: f.residuals(kind="pearson"), "kind must be"),
    ],
)
def test_bad_arguments_raise_jaxlmm_errors(sleep, call, match):
    with pytest.raises(jaxlmm.JaxLMMError, match=match):
        call(sleep)


def test_too_many_panels_and_no_covariate(penicillin):
    from jaxlmm.plotting.groups import groups_plot

    with pytest.raises(jaxlmm.JaxLMMError, match="'plate' has 24 levels, more than max_panels=10"):
        groups_plot(penicillin, x="plate_code", data=_penicillin_codes(), max_panels=10)
    with pytest.raises(jaxlmm.JaxLMMError, match="no covariate.*pass x="):
        penicillin.plot.groups()


def test_missing_matplotlib_is_a_clear_error(sleep, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(jaxlmm.JaxLMMError, match="pip install matplotlib"):
        sleep.plot.residuals()


# ---- likelihood profiles ------------------------------------------------------

DYESTUFF = "Yield ~ 1 + (1 | Batch)"


def test_profile_interval_of_a_straight_trace_is_the_wald_interval():
    # zeta(v) = (v - 5) / 2 exactly: a quadratic deviance, limits 5 -/+ 2 z
    v = np.linspace(-1.0, 11.0, 13)
    df = pd.DataFrame({"parameter": "b", "value": v, "zeta": (v - 5.0) / 2.0})
    fig = render(plot_profile(df, level=0.9))
    (ax,) = fig.axes
    trace = ax.lines[0]
    np.testing.assert_array_equal(trace.get_xdata(), v)
    np.testing.assert_array_equal(trace.get_ydata(), (v - 5.0) / 2.0)
    z = stats.norm.ppf(0.95)
    limits = ax.collections[0].get_segments()
    np.testing.assert_allclose([s[0, 0] for s in limits], [5 - 2 * z, 5 + 2 * z], rtol=1e-12)
    np.testing.assert_allclose([s[:, 1] for s in limits], [[-z, z], [-z, z]], rtol=1e-12)
    assert profile_interval(v, (v - 5.0) / 2.0, 0.99) == pytest.approx((5 - 2 * 2.5758293, 5 + 2 * 2.5758293))
    assert np.isnan(profile_interval(v, (v - 5.0) / 2.0, 0.999)).all()  # |zeta| <= 3 on this trace
    lower_only = profile_interval(v[:4], (v[:4] - 5.0) / 2.0, 0.95)  # trace stops below zeta = 0
    assert lower_only[0] == pytest.approx(5 - 2 * stats.norm.ppf(0.975)) and np.isnan(lower_only[1])


@pytest.fixture(scope="module")
def dyestuff_profile():
    from jaxlmm.profile import profile

    return profile(get_fit(DYESTUFF, "dyestuff"))


def test_profile_panels_match_lme4_intervals(dyestuff_profile):
    fig = render(plot_profile(dyestuff_profile, level=0.95))
    ref = load_json("inference/inference.json")["confint"]["dyestuff"]["profile"]
    assert [ax.get_title() for ax in fig.axes] == ref["names"]
    for ax, name, lo, hi in zip(fig.axes, ref["names"], ref["lower"], ref["upper"]):
        sub = dyestuff_profile[dyestuff_profile["parameter"] == name]
        np.testing.assert_allclose(ax.lines[0].get_ydata(), sub["zeta"], rtol=1e-12)
        drawn = [s[0, 0] for s in ax.collections[0].get_segments()]
        # a quadratic through three of 17 trace points vs lme4's spline: within 1%
        np.testing.assert_allclose(drawn, [lo, hi], rtol=1e-2)
    one = render(plot_profile(dyestuff_profile, params="sigma"))
    assert [ax.get_title() for ax in one.axes] == ["sigma"]


def test_plot_profile_bad_input(dyestuff_profile):
    with pytest.raises(jaxlmm.JaxLMMError, match="No parameter 'sigm'.*Did you mean 'sigma'"):
        plot_profile(dyestuff_profile, params="sigm")
    with pytest.raises(jaxlmm.JaxLMMError, match=r"missing \['zeta'\]"):
        plot_profile(dyestuff_profile.drop(columns="zeta"))


# ---- bootstrap distributions ----------------------------------------------------


@pytest.fixture(scope="module")
def dyestuff_boot():
    from jaxlmm.bootstrap import bootstrap

    return bootstrap(get_fit(DYESTUFF, "dyestuff"), n=10, seed=3, progress=False)  # shapes of test_bootstrap


def test_bootstrap_histograms_intervals_and_estimates(dyestuff_boot):
    fit = get_fit(DYESTUFF, "dyestuff")
    fig = render(plot_bootstrap(dyestuff_boot, fit=fit, level=0.9, method="shortest", bins=4))
    names = ["sd_(Intercept)|Batch", "sigma", "(Intercept)"]
    assert [ax.get_title() for ax in fig.axes] == names
    ci = dyestuff_boot.confint(level=0.9, method="shortest")
    vc = fit.varcorr.set_index("group")["sd_cor"]
    estimates = [vc["Batch"], fit.sigma, fit.fixef["(Intercept)"]]
    table = dyestuff_boot.table[dyestuff_boot.table["converged"]]
    for ax, name, est in zip(fig.axes, names, estimates):
        heights = np.array([p.get_height() for p in ax.patches])
        counts, _ = np.histogram(table[name], bins=4)
        np.testing.assert_array_equal(heights, counts)
        assert heights.sum() == dyestuff_boot.n_used
        lo, hi, obs = (line.get_xdata()[0] for line in ax.lines)
        assert (lo, hi) == pytest.approx(tuple(ci.loc[name]), rel=1e-12)
        assert obs == pytest.approx(est, rel=1e-10)
    # 90% shortest interval: holds ceil(0.9 * B) replicates
    sd = np.sort(table["sigma"].to_numpy())
    lo, hi = ci.loc["sigma"]
    assert np.sum((sd >= lo) & (sd <= hi)) == int(np.ceil(0.9 * len(sd)))


def test_bootstrap_parameter_selection_and_errors(dyestuff_boot):
    fig = render(plot_bootstrap(dyestuff_boot, params="sigma"))
    assert [ax.get_title() for ax in fig.axes] == ["sigma"]
    assert len(fig.axes[0].lines) == 2  # no fit given: the interval only
    with pytest.raises(jaxlmm.JaxLMMError, match="No parameter 'sd'"):
        plot_bootstrap(dyestuff_boot, params=["sd"])
    with pytest.raises(jaxlmm.JaxLMMError, match="needs the result of jaxlmm.bootstrap"):
        plot_bootstrap(pd.DataFrame({"x": [1.0]}))


def test_pb_test_histogram_and_observed_lrt():
    null = get_fit("Yield ~ 1", "dyestuff", reml=False)
    alt = get_fit(DYESTUFF, "dyestuff", reml=False)
    pb = jaxlmm.pb_test(null, alt, n=256, seed=2, progress=False)
    fig = render(plot_bootstrap(pb))
    (ax,) = fig.axes
    ok = pb.table[pb.table["converged"]]
    counts, _ = np.histogram(ok["lrt"], bins=40)
    np.testing.assert_array_equal([p.get_height() for p in ax.patches], counts)
    # the observed statistic drawn is the likelihood ratio of the two ML fits
    (observed,) = ax.lines
    assert observed.get_xdata()[0] == pytest.approx(2 * (alt.loglik - null.loglik), rel=1e-8)
    assert f"p = {pb.p_value:.3g}" in ax.get_title()
