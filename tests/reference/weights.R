# lme4's fits with prior weights (weights=): residual variance sigma^2 / w_i.
#
#     Rscript tests/reference/weights.R [output-file]
#
# Needs R with lme4, lmerTest and jsonlite. Writes weights.json beside this
# script (or to the file given). The weights are drawn here with a fixed seed
# (rounded to 3 decimals) and written out, so the tests use the very same
# numbers; the datasets are lme4's sleepstudy and Penicillin, bundled with
# jaxlmm. For each case and criterion (REML, ML): the objective (REMLcrit or
# deviance, both with lme4's -sum(log w) term), fixed effects and SEs, theta,
# sigma, as.data.frame(VarCorr), fitted values, response, Pearson, working
# and deviance residuals, conditional modes and SDs, predictions for new rows, and (REML)
# lmerTest's Satterthwaite df. Also: a fit with some zero weights (lme4 keeps
# those rows with an infinite criterion; the case records lme4's fit of the
# rows with positive weights, which is what jaxlmm fits), anova() of two
# weighted fits (refitted by ML) and the profile limits of the fixed effects
# (see there).

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = FALSE)
script <- sub("^--file=", "", args[grep("^--file=", args)])
trailing <- commandArgs(trailingOnly = TRUE)
out <- if (length(trailing) >= 1) trailing[1] else file.path(dirname(normalizePath(script)), "weights.json")

set.seed(20261126)
weights <- list(
  sleepstudy = round(runif(nrow(sleepstudy), 0.3, 3), 3),
  penicillin = round(runif(nrow(Penicillin), 0.3, 3), 3)
)
data_of <- list(sleepstudy = lme4::sleepstudy, penicillin = lme4::Penicillin)
newdata <- list(
  sleepstudy = data.frame(Days = c(0, 4.5, 11), Subject = c("308", "372", "999")),
  penicillin = data.frame(plate = c("a", "m", "zz"), sample = c("A", "F", "B"))
)

cases <- list(
  intercept = list(data = "sleepstudy", formula = "Reaction ~ Days + (1 | Subject)"),
  slope = list(data = "sleepstudy", formula = "Reaction ~ Days + (Days | Subject)"),
  crossed = list(data = "penicillin", formula = "diameter ~ 1 + (1 | plate) + (1 | sample)")
)

ranef_table <- function(fit) {
  r <- as.data.frame(ranef(fit, condVar = TRUE))
  list(grp = as.character(r$grpvar), term = as.character(r$term), level = as.character(r$grp),
       value = r$condval, cond_sd = r$condsd)
}

one_fit <- function(case, reml) {
  dat <- data_of[[case$data]]
  dat$w <- weights[[case$data]]
  fit <- lmer(as.formula(case$formula), data = dat, REML = reml, weights = w)
  vc <- as.data.frame(VarCorr(fit))
  res <- list(
    objective = if (reml) unname(REMLcrit(fit)) else unname(deviance(fit)),
    beta = unname(fixef(fit)),
    beta_names = names(fixef(fit)),
    se = unname(sqrt(diag(as.matrix(vcov(fit))))),
    theta = unname(getME(fit, "theta")),
    sigma = sigma(fit),
    varcorr = list(grp = vc$grp, var1 = vc$var1, var2 = vc$var2, vcov = vc$vcov, sdcor = vc$sdcor),
    fitted = unname(fitted(fit)),
    resid_response = unname(resid(fit, type = "response")),
    resid_pearson = unname(resid(fit, type = "pearson")),
    resid_working = unname(resid(fit, type = "working")),
    resid_deviance = unname(resid(fit, type = "deviance")),
    ranef = ranef_table(fit),
    predict = unname(predict(fit, newdata = newdata[[case$data]], allow.new.levels = TRUE)),
    predict_population = unname(predict(fit, newdata = newdata[[case$data]], re.form = NA))
  )
  if (reml) res$satterthwaite_df <- unname(summary(fit)$coefficients[, "df"])
  res
}

res <- lapply(names(cases), function(id) {
  cat(id, "\n")
  case <- cases[[id]]
  c(case, list(REML = one_fit(case, TRUE), ML = one_fit(case, FALSE)))
})
names(res) <- names(cases)

# zero weights: lme4's fit of the rows with positive weights
w0 <- weights$sleepstudy
w0[c(1, 50, 111)] <- 0
keep <- w0 > 0
sub <- lme4::sleepstudy[keep, ]
sub$w <- w0[keep]
zfit <- lmer(Reaction ~ Days + (Days | Subject), data = sub, REML = TRUE, weights = w)
zero <- list(
  data = "sleepstudy", formula = "Reaction ~ Days + (Days | Subject)", weights = w0,
  objective = unname(REMLcrit(zfit)), beta = unname(fixef(zfit)), theta = unname(getME(zfit, "theta")),
  sigma = sigma(zfit), nobs = nobs(zfit)
)

# anova of two weighted models (refitted by ML)
dat <- lme4::sleepstudy
dat$w <- weights$sleepstudy
a0 <- lme4::lmer(Reaction ~ Days + (1 | Subject), data = dat, REML = TRUE, weights = w)
a1 <- lme4::lmer(Reaction ~ Days + (Days | Subject), data = dat, REML = TRUE, weights = w)
av <- anova(a0, a1)
anova_res <- list(
  formulas = c("Reaction ~ Days + (1 | Subject)", "Reaction ~ Days + (Days | Subject)"),
  deviance = unname(av$deviance), chisq = unname(av$Chisq[2]), df = unname(av$Df[2]),
  p = unname(av[["Pr(>Chisq)"]][2]), aic = unname(av$AIC)
)

# profile confidence limits of the fixed effects of the weighted random-intercept model. lme4's
# profile() ignores the weights' log-determinant (lme4 issue #192), so the limits are found here
# from their definition: the ML deviance with beta_j held at v is the ML deviance of the model
# with beta_j x_j as an offset; the limits solve D_j(v) - D(ML) = qnorm(0.975)^2 (uniroot).
mlfit <- lme4::lmer(Reaction ~ Days + (1 | Subject), data = dat, REML = FALSE, weights = w)
held <- function(name, v) {
  fo <- if (name == "Days") Reaction ~ 1 + (1 | Subject) else Reaction ~ 0 + Days + (1 | Subject)
  off <- if (name == "Days") v * dat$Days else rep(v, nrow(dat))
  deviance(lme4::lmer(fo, data = dat, REML = FALSE, weights = w, offset = off)) - deviance(mlfit) - qnorm(0.975)^2
}
limit <- function(name, side) {
  est <- unname(fixef(mlfit)[name])
  se <- unname(sqrt(diag(as.matrix(vcov(mlfit))))[match(name, names(fixef(mlfit)))])
  uniroot(function(v) held(name, v), sort(c(est, est + side * 4 * se)), tol = 1e-10)$root
}
profile_res <- list(
  formula = "Reaction ~ Days + (1 | Subject)", parameters = c("(Intercept)", "Days"),
  lower = c(limit("(Intercept)", -1), limit("Days", -1)), upper = c(limit("(Intercept)", 1), limit("Days", 1))
)

txt <- toJSON(
  list(
    lme4_version = format(packageVersion("lme4")),
    weights = weights,
    newdata = newdata,
    cases = res,
    zero_weights = zero,
    anova = anova_res,
    profile = profile_res
  ),
  auto_unbox = TRUE, pretty = TRUE, digits = NA, na = "string"
)
writeLines(txt, out)
cat("wrote", out, "\n")
