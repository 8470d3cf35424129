# Regenerates the lme4 reference values the tests compare against.
#
#     Rscript tests/reference/make_reference.R [output-folder]
#
# Needs R with lme4, lmerTest and jsonlite (Debian: r-cran-lme4
# r-cran-lmertest r-cran-jsonlite). Every dataset is lme4's own copy
# (lme4::sleepstudy, Dyestuff, Dyestuff2, Penicillin, Pastes, InstEval).
# Writes, into the folder of this script unless another is given:
#
#   fits/<case>.json           one model fitted by REML and by ML
#   objective_at_theta.json    lme4's profiled criteria at fixed theta values
#   inference/inference.json   anova, confint, predict, fitted and residuals
#   datasets.json              size, levels and sums of each dataset, to check
#                              the datasets bundled with jaxlmm against
#   X.json                     by each other script X.R beside this one (run
#                              from here), e.g. formulas.R -> formulas.json
#
# The InstEval fits take about a minute. Field meanings: README.md beside this
# script.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = FALSE)
script <- sub("^--file=", "", args[grep("^--file=", args)])
trailing <- commandArgs(trailingOnly = TRUE)
out <- if (length(trailing) >= 1) trailing[1] else dirname(normalizePath(script))
dir.create(file.path(out, "fits"), recursive = TRUE, showWarnings = FALSE)
dir.create(file.path(out, "inference"), recursive = TRUE, showWarnings = FALSE)

LME4_VERSION <- format(packageVersion("lme4"))

write_json_file <- function(x, path, auto_unbox = TRUE) {
  # digits = NA: 15 significant digits; numeric NA is written "NA", character NA null
  txt <- toJSON(x, auto_unbox = auto_unbox, pretty = TRUE, digits = NA)
  writeLines(txt, path)
  cat("wrote", path, "\n")
}

DATASETS <- list(
  sleepstudy = lme4::sleepstudy,
  dyestuff = lme4::Dyestuff,
  dyestuff2 = lme4::Dyestuff2,
  penicillin = lme4::Penicillin,
  pastes = lme4::Pastes,
  insteval = lme4::InstEval
)
R_NAMES <- c(sleepstudy = "sleepstudy", dyestuff = "Dyestuff", dyestuff2 = "Dyestuff2",
             penicillin = "Penicillin", pastes = "Pastes", insteval = "InstEval")

# Fit in an environment that holds the formula and data, so that update()
# (used by lmerTest, profile and devFunOnly) finds them again.
fit_lmer <- function(formula, data, reml) {
  env <- new.env(parent = globalenv())
  env$f <- as.formula(formula, env = env)
  env$dat <- data
  env$reml <- reml
  seconds <- system.time(fit <- eval(quote(lme4::lmer(f, data = dat, REML = reml)), env))[["elapsed"]]
  attr(fit, "seconds") <- seconds
  fit
}

devfun_of <- function(formula, data, reml) {
  env <- new.env(parent = globalenv())
  env$f <- as.formula(formula, env = env)
  env$dat <- data
  env$reml <- reml
  eval(quote(lme4::lmer(f, data = dat, REML = reml, devFunOnly = TRUE)), env)
}

factor_levels <- function(data) {
  lapply(Filter(is.factor, data), levels)
}

# ---- fits/<case>.json ----------------------------------------------------------------

FITS <- list(
  sleepstudy_slope = list(data = "sleepstudy", formula = "Reaction ~ Days + (Days | Subject)"),
  sleepstudy_uncorr = list(data = "sleepstudy", formula = "Reaction ~ Days + (Days || Subject)"),
  sleepstudy_intercept = list(data = "sleepstudy", formula = "Reaction ~ Days + (1 | Subject)"),
  dyestuff = list(data = "dyestuff", formula = "Yield ~ 1 + (1 | Batch)"),
  dyestuff2_singular = list(data = "dyestuff2", formula = "Yield ~ 1 + (1 | Batch)"),
  penicillin_crossed = list(data = "penicillin", formula = "diameter ~ 1 + (1 | plate) + (1 | sample)"),
  pastes_nested = list(data = "pastes", formula = "strength ~ 1 + (1 | batch/cask)"),
  insteval_crossed = list(data = "insteval", formula = "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)",
                          large = TRUE)
)

fit_fields <- function(fit, reml, large) {
  vc <- as.data.frame(VarCorr(fit))
  th <- getME(fit, "theta")
  r <- list(
    reml = reml,
    objective = if (reml) REMLcrit(fit) else deviance(fit),
    loglik = as.numeric(logLik(fit)),
    aic = AIC(fit),
    bic = BIC(fit),
    theta = unname(th),
    theta_names = names(th),
    beta = unname(fixef(fit)),
    beta_names = names(fixef(fit)),
    se = unname(sqrt(diag(as.matrix(vcov(fit))))),
    sigma = sigma(fit),
    nobs = nobs(fit),
    varcorr = list(grp = vc$grp, var1 = vc$var1, var2 = vc$var2, vcov = vc$vcov, sdcor = vc$sdcor),
    singular = isSingular(fit)
  )
  if (!large) {
    re <- as.data.frame(ranef(fit, condVar = TRUE))
    r$ranef <- list(grpvar = as.character(re$grpvar), term = as.character(re$term),
                    grp = as.character(re$grp), condval = re$condval, condsd = re$condsd)
    if (reml) {
      co <- summary(lmerTest::as_lmerModLmerTest(fit))$coefficients
      r$satterthwaite_df <- unname(co[, "df"])
      r$satterthwaite_p <- unname(co[, "Pr(>|t|)"])
    }
  }
  r
}

for (id in names(FITS)) {
  case <- FITS[[id]]
  large <- isTRUE(case$large)
  data <- DATASETS[[case$data]]
  reml_fit <- fit_lmer(case$formula, data, TRUE)
  ml_fit <- fit_lmer(case$formula, data, FALSE)
  res <- list(
    id = id,
    data = case$data,
    formula = case$formula,
    lme4_version = LME4_VERSION,
    factors = factor_levels(data),
    lme4_seconds_reml = attr(reml_fit, "seconds"),
    REML = fit_fields(reml_fit, TRUE, large),
    lme4_seconds_ml = attr(ml_fit, "seconds"),
    ML = fit_fields(ml_fit, FALSE, large)
  )
  write_json_file(res, file.path(out, "fits", paste0(id, ".json")))
}

# ---- objective_at_theta.json ------------------------------------------------------------
# The profiled REML and ML criteria (lme4's devfun, what its optimizer
# minimizes) at fixed theta, boundary points (entries at 0) included. These
# theta values are the ones the tests have always used; keep them fixed.

OBJECTIVE_POINTS <- list(
  sleepstudy_slope = list(
    data = "sleepstudy", formula = "Reaction ~ Days + (Days | Subject)",
    reml = list(c(1, 0, 1), c(0.5, 0, 0.5),
                c(1.37095844714667, 0.404268323140999, 0.363128411337339), c(0, 0.3, 0)),
    ml = list(c(1, 0, 1), c(0.5, 0, 0.5),
              c(1.51152199743894, 1.30486965422349, 2.01842371387704), c(0, 0.3, 0))
  ),
  dyestuff = list(
    data = "dyestuff", formula = "Yield ~ 1 + (1 | Batch)",
    reml = list(0.97876050342587, 0.489380251712935, 1.38886070111234, 0),
    ml = list(0.97876050342587, 0.489380251712935, 0.278788766817371, 0)
  ),
  penicillin_crossed = list(
    data = "penicillin", formula = "diameter ~ 1 + (1 | plate) + (1 | sample)",
    reml = list(c(1.74491502214429, 3.59401348179836), c(0.872457511072147, 1.79700674089918),
                c(0.133321336393658, 0.635950398070074), c(0, 0)),
    ml = list(c(1.74491502214429, 3.59401348179836), c(0.872457511072147, 1.79700674089918),
              c(0.284252921416072, 2.65645542090478), c(0, 0))
  ),
  pastes_nested = list(
    data = "pastes", formula = "strength ~ 1 + (1 | batch/cask)",
    reml = list(c(1, 1), c(0.5, 0.5), c(2.44046692857552, 1.32011334573019), c(0, 0)),
    ml = list(c(1, 1), c(0.5, 0.5), c(0.306638594078475, 1.78130843398), c(0, 0))
  )
)

objective <- list()
for (id in names(OBJECTIVE_POINTS)) {
  case <- OBJECTIVE_POINTS[[id]]
  data <- DATASETS[[case$data]]
  points <- list()
  for (reml in c(TRUE, FALSE)) {
    devfun <- devfun_of(case$formula, data, reml)
    for (theta in if (reml) case$reml else case$ml) {
      points[[length(points) + 1]] <- list(reml = reml, theta = theta, value = devfun(theta))
    }
  }
  theta_names <- names(getME(fit_lmer(case$formula, data, TRUE), "theta"))
  objective[[id]] <- list(id = id, data = case$data, formula = case$formula, points = points,
                          theta_names = theta_names)
}
# written without unboxing: every scalar is a one-element array, as the tests expect
write_json_file(objective, file.path(out, "objective_at_theta.json"), auto_unbox = FALSE)

# ---- inference/inference.json -------------------------------------------------------------

sleep <- DATASETS$sleepstudy
SLOPE <- "Reaction ~ Days + (Days | Subject)"

anova_fields <- function(a) {
  list(npar = a$npar, aic = a$AIC, bic = a$BIC, loglik = a$logLik, deviance = a$deviance,
       chisq = a$Chisq, df = a$Df, p = a[["Pr(>Chisq)"]])
}

# random slope: both fits by REML; anova refits them by ML
m0 <- fit_lmer("Reaction ~ Days + (1 | Subject)", sleep, TRUE)
m1 <- fit_lmer(SLOPE, sleep, TRUE)
anova_random_slope <- c(
  list(models = c("Reaction ~ Days + (1 | Subject)", SLOPE), refit_ml = TRUE),
  anova_fields(anova(m0, m1, refit = TRUE))
)

# fixed effect of Days: both fits by ML
f0 <- fit_lmer("Reaction ~ 1 + (Days | Subject)", sleep, FALSE)
f1 <- fit_lmer(SLOPE, sleep, FALSE)
anova_fixed_days <- c(
  list(models = c("Reaction ~ 1 + (Days | Subject)", SLOPE)),
  anova_fields(anova(f0, f1))
)

interval_fields <- function(ci) {
  list(names = rownames(ci), lower = unname(ci[, 1]), upper = unname(ci[, 2]))
}

CONFINT <- list(
  sleepstudy_slope = list(data = "sleepstudy", formula = SLOPE, wald = TRUE),
  dyestuff = list(data = "dyestuff", formula = "Yield ~ 1 + (1 | Batch)", wald = FALSE),
  penicillin = list(data = "penicillin", formula = "diameter ~ 1 + (1 | plate) + (1 | sample)", wald = FALSE)
)
confint_res <- list()
for (id in names(CONFINT)) {
  case <- CONFINT[[id]]
  fit <- fit_lmer(case$formula, DATASETS[[case$data]], TRUE)
  r <- list(formula = case$formula, reml = TRUE,
            profile = interval_fields(confint(fit, method = "profile", oldNames = FALSE, quiet = TRUE)))
  if (case$wald) {
    r$wald <- interval_fields(confint(fit, method = "Wald", oldNames = FALSE))
  }
  confint_res[[id]] <- r
}

slope_fit <- fit_lmer(SLOPE, sleep, TRUE)
newdata <- data.frame(Days = c(0, 5, 9, 0, 5), Subject = c("308", "308", "372", "999", "999"))
predict_res <- list(
  formula = SLOPE, reml = TRUE, newdata = as.list(newdata),
  conditional = unname(predict(slope_fit, newdata = newdata, allow.new.levels = TRUE)),
  population = unname(predict(slope_fit, newdata = newdata, re.form = NA))
)

inference <- list(
  lme4_version = LME4_VERSION,
  anova_random_slope = anova_random_slope,
  anova_fixed_days = anova_fixed_days,
  confint = confint_res,
  predict = predict_res,
  fitted_residuals_sleepstudy = list(fitted_head = unname(head(fitted(slope_fit), 10)),
                                     resid_head = unname(head(resid(slope_fit), 10)))
)
write_json_file(inference, file.path(out, "inference", "inference.json"))

# ---- datasets.json ----------------------------------------------------------------------------
# What jaxlmm's bundled copies must reproduce: rows, columns in order, and per
# column either (numeric) the sum, the sum of squares and the row-weighted sum
# sum(i * x_i), or (factor) the levels in R's order, the count of each level
# and the row-weighted sum of the level codes (1-based). The row-weighted sums
# pin the order of the rows.

column_summary <- function(x) {
  i <- seq_along(x)
  if (is.factor(x)) {
    list(levels = levels(x), counts = as.vector(table(x)), code_weighted_sum = sum(i * as.numeric(as.integer(x))))
  } else {
    x <- as.numeric(x)
    list(sum = sum(x), sum_squares = sum(x^2), weighted_sum = sum(i * x))
  }
}

datasets <- list()
for (name in names(DATASETS)) {
  d <- DATASETS[[name]]
  datasets[[name]] <- list(r_name = paste0("lme4::", R_NAMES[[name]]), nrow = nrow(d), columns = names(d),
                           summary = lapply(d, column_summary))
}
write_json_file(list(lme4_version = LME4_VERSION, datasets = datasets), file.path(out, "datasets.json"))

# ---- the other scripts of this folder ----------------------------------------------------------
# Each X.R beside this script writes X.json (to the file given as its
# argument) and describes its fields in its header: formulas.R (lme4's
# reading of formulas), weights.R (prior weights), ... Each runs in its own R
# process.

here <- dirname(normalizePath(script))
failed <- character(0)
for (other in setdiff(sort(list.files(here, pattern = "[.]R$")), basename(script))) {
  target <- file.path(out, sub("[.]R$", ".json", other))
  status <- system2(file.path(R.home("bin"), "Rscript"), c(shQuote(file.path(here, other)), shQuote(target)))
  if (status != 0) failed <- c(failed, other)
}
if (length(failed) > 0) stop("failed: ", paste(failed, collapse = ", "))
