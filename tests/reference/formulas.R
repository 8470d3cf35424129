# lme4's reading of formulas: transforms, Wilkinson operators, factor(), offsets.
#
#     Rscript tests/reference/formulas.R [output-file]
#
# Needs R with lme4 and jsonlite (Debian: r-cran-lme4 r-cran-jsonlite).
# Writes formulas.json beside this script (or to the file given): the
# synthetic dataset used (drawn here with a fixed seed, written out whole so
# the tests read the very same numbers), and for each case lme4's REML
# criterion, fixed effects with their names, theta, sigma, and predictions for
# new rows (with and without the random effects). Cases on sleepstudy use
# lme4::sleepstudy, which is bundled with jaxlmm.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = FALSE)
script <- sub("^--file=", "", args[grep("^--file=", args)])
trailing <- commandArgs(trailingOnly = TRUE)
out <- if (length(trailing) >= 1) trailing[1] else file.path(dirname(normalizePath(script)), "formulas.json")

# ---- a small dataset with every kind of column -----------------------------
set.seed(20261126)
n <- 160
syn <- data.frame(
  g = factor(sprintf("g%02d", rep(1:16, each = 10))),
  f = factor(sample(c("lo", "mid", "hi"), n, replace = TRUE), levels = c("lo", "mid", "hi")),
  h = factor(sample(c("u", "v"), n, replace = TRUE)),
  k = sample(c(1, 2, 10, 20), n, replace = TRUE),
  x1 = round(rnorm(n), 3),
  x2 = round(runif(n, 0, 4), 3),
  t = round(runif(n, 0.5, 3), 3)
)
b <- rnorm(16, sd = 0.8)
syn$y <- round(1 + 0.5 * syn$x1 - 0.3 * syn$x2 + 0.2 * syn$x1 * syn$x2 + c(lo = 0, mid = 0.7, hi = -0.4)[as.character(syn$f)] +
  0.05 * syn$k + log(syn$t) + b[as.integer(syn$g)] + rnorm(n, sd = 0.6), 4)

newsyn <- data.frame(
  g = c("g01", "g05", "new"),
  f = factor(c("hi", "lo", "mid"), levels = c("lo", "mid", "hi")),
  h = factor(c("v", "u", "v")),
  k = c(10, 1, 2),
  x1 = c(0.25, -1.5, 2.0),
  x2 = c(3.5, 0.1, 1.7),
  t = c(1.5, 0.7, 2.9)
)
newsleep <- data.frame(Days = c(0, 4.5, 11), Subject = c("308", "372", "999"))
newsleep_days <- data.frame(Days = c(0, 4, 9), Subject = c("308", "372", "999"))

newcake <- data.frame(
  recipe = c("A", "C"), replicate = c("1", "15"),
  temperature = factor(c("185", "225"), levels = levels(lme4::cake$temperature), ordered = TRUE)
)
datasets <- list(sleepstudy = lme4::sleepstudy, synthetic = syn, cake = lme4::cake)
newdata <- list(sleepstudy = newsleep, sleepstudy_days = newsleep_days, synthetic = newsyn, cake = newcake)

cases <- list(
  square_int = list(data = "sleepstudy", formula = "Reaction ~ Days + I(Days^2) + (Days | Subject)"),
  poly_scale = list(data = "sleepstudy", formula = "log(Reaction) ~ poly(Days, 2) + scale(Days) + (1 | Subject)"),
  factor_days = list(data = "sleepstudy", formula = "Reaction ~ factor(Days) + (1 | Subject)",
                     newdata = "sleepstudy_days"),
  power_two = list(data = "synthetic", formula = "y ~ (x1 + x2 + f)^2 + (1 | g)"),
  nested_fixed = list(data = "synthetic", formula = "y ~ f/x1 + (1 | g)"),
  no_intercept = list(data = "synthetic", formula = "y ~ 0 + f:h + x1 + (1 | g)"),
  factor_numeric = list(data = "synthetic", formula = "y ~ factor(k) + x1 * h + (x1 || g)"),
  arithmetic = list(data = "synthetic", formula = "y ~ I(x1^2 - 2*x2) + log(x2 + 1, base = 2) + sqrt(t) + exp(-x1/4) + (1 | g)"),
  offset_formula = list(data = "synthetic", formula = "y ~ x1 + x2 + offset(log(t)) + (1 | g)"),
  offset_argument = list(data = "synthetic", formula = "y ~ x1 + x2 + (1 | g)", offset = "log(t)"),
  offset_both = list(data = "synthetic", formula = "y ~ x1 + offset(0.5 * x2) + (1 | g)", offset = "log(t)"),
  sum_contrasts = list(data = "synthetic", formula = "y ~ C(f, contr.sum) + x1 + (1 | g)"),
  ordered_factor = list(data = "cake", formula = "angle ~ recipe + temperature + (1 | recipe:replicate)"),
  ordered_call = list(data = "synthetic", formula = "y ~ ordered(k) + x1 + (1 | g)"),
  # '|' binds more loosely than '+' in R: a bar outside parentheses makes the whole right-hand side
  # one random-effect term, and the fixed part is the intercept alone
  bare_bar = list(data = "sleepstudy", formula = "Reaction ~ 1 | Subject"),
  bare_bar_slope = list(data = "sleepstudy", formula = "Reaction ~ Days + 1 | Subject"),
  bare_double_bar = list(data = "sleepstudy", formula = "Reaction ~ Days || Subject"),
  # factor() of an ordered factor stays ordered (polynomial contrasts)
  factor_of_ordered = list(data = "cake", formula = "angle ~ recipe + factor(temperature) + (1 | recipe:replicate)"),
  # scale() with numbers: subtract the centre given, divide by the scale given
  scale_numbers = list(data = "synthetic", formula = "y ~ scale(x1, center = 2) + scale(x2, center = 1, scale = 2) + scale(t, FALSE) + (1 | g)"),
  # a grouping factor written as factor(column)
  # (lme4's predict cannot evaluate such a grouping factor on new data: no predictions here)
  grouping_call = list(data = "sleepstudy", formula = "Reaction ~ Days + (1 | Subject) + (1 | factor(Days))",
                       predict = FALSE)
)

fit_case <- function(case) {
  dat <- datasets[[case$data]]
  env <- new.env(parent = globalenv())
  env$fo <- as.formula(case$formula, env = env)
  env$dat <- dat
  if (is.null(case$offset)) {
    fit <- eval(quote(lmer(fo, data = dat, REML = TRUE)), env)
  } else {
    env$off <- eval(parse(text = case$offset), dat)
    fit <- eval(quote(lmer(fo, data = dat, REML = TRUE, offset = off)), env)
  }
  nd <- newdata[[if (is.null(case$newdata)) case$data else case$newdata]]
  # predict.merMod ignores the offset= argument for new data; add it by hand
  extra <- if (is.null(case$offset)) 0 else eval(parse(text = case$offset), nd)
  list(
    data = case$data,
    newdata = if (is.null(case$newdata)) case$data else case$newdata,
    formula = case$formula,
    offset = if (is.null(case$offset)) NULL else case$offset,
    objective = unname(REMLcrit(fit)),
    beta = I(unname(fixef(fit))),  # I(): a list even for one coefficient
    beta_names = I(names(fixef(fit))),
    theta = unname(getME(fit, "theta")),
    sigma = sigma(fit),
    fitted_head = unname(fitted(fit)[1:5]),
    predict = if (isFALSE(case$predict)) NULL else unname(predict(fit, newdata = nd, allow.new.levels = TRUE)) + extra,
    predict_population = if (isFALSE(case$predict)) NULL else unname(predict(fit, newdata = nd, re.form = NA)) + extra
  )
}

res <- lapply(names(cases), function(id) {
  cat(id, "\n")
  withCallingHandlers(fit_case(cases[[id]]), message = function(m) cat("  ", conditionMessage(m)))
})
names(res) <- names(cases)
txt <- toJSON(
  list(
    lme4_version = format(packageVersion("lme4")),
    synthetic = syn,
    cake = lme4::cake,
    cake_temperature_levels = levels(lme4::cake$temperature),
    newdata = newdata,
    cases = res
  ),
  auto_unbox = TRUE, pretty = TRUE, digits = NA
)
writeLines(txt, out)
cat("wrote", out, "\n")
