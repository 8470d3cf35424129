# Testing and sizing variance components: RLRsim, lmerTest's ranova, performance.
#
#     Rscript tests/reference/varcomp.R [output-file]
#
# Needs R with lme4, lmerTest, RLRsim, performance and jsonlite (Debian:
# r-cran-lme4 r-cran-lmertest r-cran-rlrsim r-cran-performance r-cran-jsonlite).
# Writes varcomp.json beside this script (or to the file given), on lme4's own
# datasets (bundled with jaxlmm):
#
# - `versions`: the R packages used.
# - `exact`: one object per case of RLRsim's exactRLRT / exactLRT, with
#   `call` (the R call), `formula` (the model with the tested variance; for
#   sleepstudy also `formula_null` and `formula_alone`, RLRsim's m0 and m),
#   `reml`, `statistic` (the observed (R)LRT), `p_value` and `nsim` (the
#   simulated null sample's size; 0 when the statistic is 0 and RLRsim does
#   not simulate), `mu` (the eigenvalues of the simulation, as RLRTSim/LRTSim
#   compute them, divided by the largest; `xi` too for LRT), `q` (fixed
#   effects restricted under the null, LRT only), and a summary of a
#   simulated null sample (`null_nsim` draws, seed 1): `null_mass_at_zero`,
#   `null_mean`, `null_quantiles` at `null_probs`.
# - `ranova`: lmerTest's ranova(fit) per case: `formula`, `rows` (its row
#   names) and its columns `npar`, `logLik`, `AIC`, `LRT`, `Df`, `p` (NA in
#   the first row is "NA").
# - `shares`: performance's icc and r2_nakagawa per case: `formula`,
#   `icc_adjusted`, `icc_conditional`, `r2_marginal`, `r2_conditional`, and
#   insight's get_variance parts `var_fixed`, `var_random`, `var_residual`.
#
# All fits are REML unless `reml` says otherwise.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(RLRsim)
  library(performance)
  library(insight)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = FALSE)
script <- sub("^--file=", "", args[grep("^--file=", args)])
trailing <- commandArgs(trailingOnly = TRUE)
out <- if (length(trailing) >= 1) trailing[1] else file.path(dirname(normalizePath(script)), "varcomp.json")

NSIM <- 100000
NULL_PROBS <- c(0.5, 0.75, 0.9, 0.95, 0.99)

# RLRsim's design of m; a zero variance (a singular fit) counts as 1, as exactRLRT does
design_of <- function(m) {
  d <- RLRsim:::extract.lmerModDesign(m)
  if (all(d$Vr == 0)) diag(d$Vr) <- 1
  d
}

# the eigenvalues of RLRTSim (REML) and LRTSim (ML), computed as they do
mu_of <- function(m) {
  d <- design_of(m)
  S <- chol(cov2cor(d$Vr))
  mu <- (svd(S %*% t(qr.resid(qr(d$X), d$Z)), nu = 0, nv = 0)$d)^2
  xi <- (svd(S %*% t(d$Z), nu = 0, nv = 0)$d)^2
  list(mu = mu, xi = xi)
}

null_summary <- function(sample) {
  list(null_nsim = length(sample), null_mass_at_zero = mean(sample == 0), null_mean = mean(sample),
       null_probs = NULL_PROBS, null_quantiles = unname(quantile(sample, NULL_PROBS)))
}

rlrt_case <- function(m, mA = NULL, m0 = NULL, call) {
  test <- suppressMessages(if (is.null(mA)) exactRLRT(m, nsim = NSIM, seed = 1) else exactRLRT(m, mA, m0, nsim = NSIM, seed = 1))
  e <- mu_of(m)
  d <- design_of(m)
  sample <- RLRTSim(d$X, d$Z, sqrt.Sigma = chol(cov2cor(d$Vr)), seed = 1, nsim = NSIM)
  c(list(call = call, formula = deparse(formula(if (is.null(mA)) m else mA)), reml = TRUE,
         statistic = unname(test$statistic), p_value = test$p.value, nsim = length(test$sample),
         mu = e$mu / max(e$mu)), null_summary(sample))
}

lrt_case <- function(m, m0, call) {
  test <- suppressMessages(exactLRT(m, m0, nsim = NSIM, seed = 1))
  e <- mu_of(m)
  d <- design_of(m)
  q <- ncol(d$X) - length(coef(m0))
  sample <- LRTSim(d$X, d$Z, q, sqrt.Sigma = chol(cov2cor(d$Vr)), seed = 1, nsim = NSIM)
  scale <- max(e$mu, e$xi)
  c(list(call = call, formula = deparse(formula(m)), formula_null = deparse(formula(m0)), reml = FALSE,
         statistic = unname(test$statistic), p_value = test$p.value, nsim = length(test$sample),
         q = q, mu = e$mu / scale, xi = e$xi / scale), null_summary(sample))
}

# ---- RLRsim -----------------------------------------------------------------------------------
sleep_A <- lmer(Reaction ~ Days + (1 | Subject) + (0 + Days | Subject), sleepstudy)
sleep_0 <- lmer(Reaction ~ Days + (1 | Subject), sleepstudy)
sleep_m <- lmer(Reaction ~ Days + (0 + Days | Subject), sleepstudy)
dye <- lmer(Yield ~ 1 + (1 | Batch), Dyestuff)
dye2 <- lmer(Yield ~ 1 + (1 | Batch), Dyestuff2)
dye_ml <- lmer(Yield ~ 1 + (1 | Batch), Dyestuff, REML = FALSE)
sleep_int_ml <- lmer(Reaction ~ Days + (1 | Subject), sleepstudy, REML = FALSE)

exact <- list(
  sleepstudy_slope = c(
    rlrt_case(sleep_m, sleep_A, sleep_0, "exactRLRT(m, mA, m0)"),
    list(formula_null = deparse(formula(sleep_0)), formula_alone = deparse(formula(sleep_m)))
  ),
  dyestuff = rlrt_case(dye, call = "exactRLRT(m)"),
  dyestuff2 = rlrt_case(dye2, call = "exactRLRT(m)"),
  dyestuff_ml = lrt_case(dye_ml, lm(Yield ~ 1, Dyestuff), "exactLRT(m, m0)"),
  sleepstudy_intercept_ml_q1 = lrt_case(sleep_int_ml, lm(Reaction ~ 1, sleepstudy), "exactLRT(m, m0)")
)

# ---- lmerTest's ranova ------------------------------------------------------------------------
ranova_case <- function(formula, data) {
  m <- lmer(as.formula(formula), data)
  r <- as.data.frame(ranova(m))
  list(formula = formula, rows = rownames(r), npar = r$npar, logLik = r$logLik, AIC = r$AIC,
       LRT = r$LRT, Df = r$Df, p = r[["Pr(>Chisq)"]])
}
ranova_cases <- list(
  sleepstudy_slope = ranova_case("Reaction ~ Days + (Days | Subject)", sleepstudy),
  penicillin = ranova_case("diameter ~ 1 + (1 | plate) + (1 | sample)", Penicillin),
  # a reduced (0 + x | g) becomes (1 | g), which merges with the (1 | g) beside it
  sleepstudy_uncorr = ranova_case("Reaction ~ Days + (Days || Subject)", sleepstudy),
  sleepstudy_three = ranova_case(
    "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject) + (0 + I(Days^2) | Subject)", sleepstudy)
)

# ---- performance's icc and r2_nakagawa ----------------------------------------------------------
share_case <- function(formula, data) {
  m <- lmer(as.formula(formula), data)
  i <- icc(m)
  r <- r2_nakagawa(m)
  v <- get_variance(m)
  list(formula = formula, icc_adjusted = i$ICC_adjusted, icc_conditional = i$ICC_conditional,
       r2_marginal = unname(r$R2_marginal), r2_conditional = unname(r$R2_conditional),
       var_fixed = v$var.fixed, var_random = v$var.random, var_residual = v$var.residual)
}
shares <- list(
  sleepstudy_slope = share_case("Reaction ~ Days + (Days | Subject)", sleepstudy),
  sleepstudy_intercept = share_case("Reaction ~ Days + (1 | Subject)", sleepstudy),
  penicillin = share_case("diameter ~ 1 + (1 | plate) + (1 | sample)", Penicillin)
)

versions <- lapply(c("lme4", "lmerTest", "RLRsim", "performance", "insight"), function(p) format(packageVersion(p)))
names(versions) <- c("lme4", "lmerTest", "RLRsim", "performance", "insight")
txt <- toJSON(list(versions = versions, exact = exact, ranova = ranova_cases, shares = shares),
              auto_unbox = TRUE, pretty = TRUE, digits = NA, na = "string")
writeLines(txt, out)
cat("wrote", out, "\n")
