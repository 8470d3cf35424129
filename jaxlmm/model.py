"""The model object: a formula and data turned into cross-products, ready to fit.

``LinearMixedModel(formula, data)`` parses and builds the design once
(lme4's ``lFormula`` + ``mkLmerDevfun``); ``.deviance(theta, reml)`` is the
pure objective at any theta, and ``.fit(reml, method)`` optimizes it
(``optimizeLmer``) and returns a frozen :class:`~jaxlmm.results.LmmFit`
(``mkMerMod``). ``lmm(formula, data)`` does both in one call.
"""

from __future__ import annotations

import inspect

from ._config import ensure_x64, on_device, uses_float64
from .ahead import compile_ahead
from .control import Control, as_control
from .crossprod import CrossProducts, cross_products
from .design import Design, build_design
from .errors import JaxLMMError, closest_name
from .fitting import deviance_jit
from .results import LmmFit, after_fit, estimate
from .theta import theta_lower_bounds, theta_start
from .validate import as_theta, check_bool


class LinearMixedModel:
    """A linear mixed model y = X beta + Z b + e specified by an lme4 formula.

    Holds the parsed formula, the design (model matrices, group codes) and
    the cross-products (``products``); fitting does not touch the rows again.
    """

    @uses_float64
    def __init__(self, formula: str, data, *, offset=None, weights=None, control: Control | None = None,
                 design: Design | None = None, **unknown):
        """``offset``: a known term of the mean with coefficient 1 (lme4's ``offset=``): one number
        per row of ``data``, or the text of an expression in its columns such as ``"log(hours)"``;
        added to the formula's own ``offset(...)`` terms.

        ``weights``: prior weights w_i (lme4's ``weights=``): row i has residual variance
        sigma^2 / w_i. One non-negative number per row of ``data`` or the text of an expression
        in its columns such as ``"w"``; rows of weight zero are dropped.

        ``control``: a :class:`~jaxlmm.control.Control` (lme4's ``lmerControl``): chunk sizes,
        the optimizer's iteration caps and Hessian policy; recorded on the fit."""
        ensure_x64()
        if unknown:
            name = next(iter(unknown))
            raise JaxLMMError(
                f"LinearMixedModel got an unknown argument '{name}'; it takes formula, data, offset=, weights=, "
                f"control= (and .fit(reml=, method=, ...)).{closest_name(name, ['offset', 'weights', 'control'])}"
            )
        self.control = as_control(control)
        self.formula = formula
        self.design = (
            design if design is not None else build_design(formula, data, offset=offset, weights=weights)
        )
        self.products: CrossProducts = cross_products(self.design, control=self.control)
        self.lower = theta_lower_bounds(self.products.term_dims)
        self.theta0 = theta_start(self.products.term_dims)
        self.data_name = getattr(data, "attrs", {}).get("name") if data is not None else None

    @property
    def term_dims(self):
        return self.products.term_dims

    @property
    def nobs(self) -> int:
        return self.design.n

    @uses_float64
    def deviance(self, theta, reml: bool = True) -> float:
        """The profiled REML criterion (or ML deviance) at ``theta``, lme4's scale."""
        ensure_x64()
        reml = check_bool(reml, "reml")
        theta = on_device(as_theta(theta, self.theta0.size))
        return float(deviance_jit(theta, self.products, reml))

    @uses_float64
    def fit(self, reml: bool = True, method: str = "newton", theta0=None, max_iter: int | None = None,
            control: Control | None = None) -> LmmFit:
        """Estimate the model by REML (default) or ML; returns a frozen :class:`~jaxlmm.results.LmmFit`.

        ``control``: the settings of this fit (default: the model's); ``max_iter`` is short for
        ``control.replace(max_iter=...)``.
        """
        ensure_x64()
        control = self.control if control is None else as_control(control)
        with compile_ahead(after_fit(self.products, method, control)):
            return estimate(
                self.design, self.products, reml=reml, method=method, theta0=theta0, max_iter=max_iter,
                control=control, data_name=self.data_name,
            )


def _keywords(func, skip=("self", "formula", "data", "design")) -> list[str]:
    return [
        name for name, p in inspect.signature(func).parameters.items()
        if name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def _split_lmm_keywords(reml, kwargs: dict) -> tuple[bool, dict, dict]:
    """lme4's spellings resolved, unknown keywords refused; the model's and the fit's keywords."""
    kwargs = dict(kwargs)
    if "REML" in kwargs:
        if reml is not None:
            raise JaxLMMError("Give reml= or lme4's REML=, not both.")
        reml = kwargs.pop("REML")
    reml = check_bool(True if reml is None else reml, "reml")
    model_kw, fit_kw = _keywords(LinearMixedModel.__init__), _keywords(LinearMixedModel.fit)
    fit_kw = [k for k in fit_kw if k not in ("reml", "method")]
    unknown = [k for k in kwargs if k not in model_kw and k not in fit_kw]
    if unknown:
        accepted = list(dict.fromkeys(["formula", "data"] + _keywords(lmm, skip=()) + model_kw + fit_kw))
        accepted = [k for k in accepted if k != "kwargs"]
        raise JaxLMMError(
            f"lmm() got an unexpected keyword argument '{unknown[0]}'."
            f"{closest_name(unknown[0], accepted)} The accepted keywords are: {', '.join(accepted)}."
        )
    return (
        reml,
        {k: v for k, v in kwargs.items() if k in model_kw},
        {k: v for k, v in kwargs.items() if k not in model_kw},
    )


@uses_float64
def lmm(formula: str, data, reml: bool | None = None, method: str = "newton", **kwargs):
    """Fit ``formula`` to ``data`` by REML (default) or ML, like lme4's ``lmer``.

    ``reml``: True (REML, the default when not given) or False (ML); lme4's
    spelling ``REML=`` is accepted too. Further keywords go to
    :class:`LinearMixedModel` and its :meth:`~LinearMixedModel.fit`
    (``offset``, ``weights``, ``control``, ``theta0``, ``max_iter``); any other keyword is an error naming the
    accepted ones.
    """
    reml, model_kw, fit_kw = _split_lmm_keywords(reml, kwargs)
    return LinearMixedModel(formula, data, **model_kw).fit(reml=reml, method=method, **fit_kw)
