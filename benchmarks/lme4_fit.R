# Rscript lme4_fit.R data.csv "formula" TRUE|FALSE "f1,f2" -> one JSON line: seconds, objective
suppressMessages(library(lme4))
a <- commandArgs(trailingOnly = TRUE)
d <- read.csv(a[1])
for (v in strsplit(a[4], ",")[[1]]) d[[v]] <- factor(d[[v]])
reml <- as.logical(a[3])
t <- system.time(f <- lmer(as.formula(a[2]), d, REML = reml))[["elapsed"]]
obj <- if (reml) lme4::REMLcrit(f) else deviance(f)
cat(sprintf('{"seconds": %.4f, "objective": %.10f}\n', t, obj))
