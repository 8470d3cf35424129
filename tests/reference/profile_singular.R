# Profile intervals of singular and near-singular fits (lme4's confint(method = "profile")).
#
#     Rscript tests/reference/profile_singular.R [output-file]
#
# Needs R with lme4 and jsonlite. Writes profile_singular.json beside this
# script (or to the file given). The data are lme4's sleepstudy with one more
# column z of pseudo-random noise that anyone can recompute without R's random
# number generator: z_i = ((i * 7919) mod 97) / 97 - 0.5 for the rows i = 1..180
# in sleepstudy's order. Fields:
#
# - `lme4_version`, `z_rule` (the rule above, as text);
# - `cases`: one object per model with `formula`, `reml`, `objective` (REML
#   criterion or deviance), `theta`, `singular` (isSingular), `names` (the
#   parameters in confint's order, oldNames = FALSE), `lower`, `upper` (95%
#   profile limits; "NA" where lme4 gives NA).

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = FALSE)
script <- sub("^--file=", "", args[grep("^--file=", args)])
here <- if (length(script)) dirname(normalizePath(script)) else "."
trailing <- commandArgs(trailingOnly = TRUE)
out <- if (length(trailing)) trailing[1] else file.path(here, "profile_singular.json")

d <- sleepstudy
d$z <- ((seq_len(nrow(d)) * 7919) %% 97) / 97 - 0.5

num <- function(x) ifelse(is.na(x), "NA", signif(x, 15))

case <- function(formula, reml) {
  fit <- lmer(as.formula(formula), d, REML = reml,
              control = lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5)))
  ci <- suppressWarnings(confint(fit, method = "profile", oldNames = FALSE))
  list(
    formula = formula, reml = reml,
    objective = signif(if (reml) REMLcrit(fit) else deviance(fit), 15),
    theta = signif(as.numeric(getME(fit, "theta")), 15),
    singular = isSingular(fit),
    names = rownames(ci),
    lower = num(ci[, 1]), upper = num(ci[, 2])
  )
}

res <- list(
  lme4_version = as.character(packageVersion("lme4")),
  z_rule = "z_i = ((i * 7919) mod 97) / 97 - 0.5, i = 1..180 in sleepstudy's row order",
  cases = list(
    case("Reaction ~ Days + (Days + z | Subject)", TRUE),
    case("Reaction ~ Days + (Days + z | Subject)", FALSE),
    case("Reaction ~ Days + (1 | Subject) + (0 + z | Subject)", TRUE)
  )
)
writeLines(toJSON(res, auto_unbox = TRUE, pretty = TRUE, digits = NA), out)
