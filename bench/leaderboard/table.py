"""Leaderboard tables: the latest complete run per (model, protocol, dataset), ranked by robust accuracy.

Only runs of the same threat protocol hash are ranked together: the table has one block per
(dataset, threat, protocol hash).
"""
from __future__ import annotations

import pandas as pd

from bench.stats import wilson_interval
from bench.store import Store

FORMATS = ("markdown", "csv", "json")

_RUNS_SQL = """
WITH runs AS (
    SELECT run_id, any_value(model) AS model, any_value(dataset) AS dataset, any_value(threat) AS threat,
           any_value(threat_hash) AS threat_hash, any_value(run_n) AS run_n, any_value(seed) AS seed,
           count(*) AS n, sum(clean_correct::INT) AS clean, sum(robust::INT) AS robust,
           min(created) AS date
    FROM rows GROUP BY run_id
)
SELECT * FROM runs
WHERE n = run_n
  AND (? IS NULL OR dataset = ?) AND (? IS NULL OR threat = ?)
QUALIFY row_number() OVER (PARTITION BY model, threat_hash, dataset ORDER BY date DESC, n DESC) = 1
ORDER BY dataset, threat, threat_hash, robust * 1.0 / n DESC, clean * 1.0 / n DESC, model
"""


def leaderboard(store: Store, dataset: str | None = None, threat: str | None = None) -> pd.DataFrame:
    runs = store.query(_RUNS_SQL, [dataset, dataset, threat, threat])
    intervals = [wilson_interval(int(r), int(n)) for r, n in zip(runs.robust, runs.n)]
    return pd.DataFrame({
        "dataset": runs.dataset, "threat": runs.threat, "model": runs.model,
        "clean_acc": runs.clean / runs.n, "robust_acc": runs.robust / runs.n,
        "robust_ci_low": [lo for lo, _ in intervals], "robust_ci_high": [hi for _, hi in intervals],
        "n": runs.n.astype(int), "seed": runs.seed.astype(int), "protocol": runs.threat_hash.str[:12],
        "date": pd.to_datetime(runs.date).dt.strftime("%Y-%m-%d %H:%M"), "run_id": runs.run_id,
    })


def render(table: pd.DataFrame, fmt: str = "markdown") -> str:
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return table.to_json(orient="records", indent=2)
    shown = table.assign(
        clean=(100 * table.clean_acc).map("{:.2f}".format),
        robust=(100 * table.robust_acc).map("{:.2f}".format),
        interval=[f"{100 * lo:.1f}-{100 * hi:.1f}" for lo, hi in zip(table.robust_ci_low, table.robust_ci_high)],
    )
    blocks = []
    for (dataset, threat, protocol), group in shown.groupby(["dataset", "threat", "protocol"], sort=False):
        group = group.reset_index(drop=True)
        group.insert(0, "rank", range(1, len(group) + 1))
        columns = ["rank", "model", "clean", "robust", "interval", "n", "seed", "protocol", "date"]
        blocks.append(f"### {dataset} / {threat}  (protocol {protocol}; accuracies in %, 95% Wilson interval)\n\n"
                      + group[columns].to_markdown(index=False))
    return "\n\n".join(blocks) if blocks else "(no complete runs match)"


_QUALITY_SQL = """
WITH runs AS (
    SELECT run_id, any_value(cvae) AS cvae, any_value(cvae_hash) AS cvae_hash, any_value(dataset) AS dataset,
           any_value(pairs) AS pairs, any_value(eps) AS eps, any_value(eps_value) AS eps_value,
           any_value(run_n) AS run_n, any_value(seed) AS seed, count(*) AS n, min(created) AS date,
           avg(encoder_ae) AS encoder_ae, avg(pgd_ae) AS pgd_ae, avg(eae) AS eae, avg(recon) AS recon,
           avg(kl) AS kl, avg(identity) AS identity
    FROM rows GROUP BY run_id
)
SELECT * FROM runs
WHERE n = run_n AND (? IS NULL OR dataset = ?)
QUALIFY row_number() OVER (PARTITION BY cvae_hash, pairs, eps, dataset ORDER BY date DESC, n DESC) = 1
ORDER BY dataset, cvae, pairs = 'in-family' DESC, pairs, eps_value
"""

QUALITY_COLUMNS = ["cvae", "pairs", "eps", "eps_value", "encoder_ae", "pgd_ae", "eae", "recon", "kl", "identity",
                   "n", "seed"]


def quality_board(store: Store, dataset: str | None = None) -> pd.DataFrame:
    """Latest complete quality run per (perturbation set, pair family, eps): mean errors per pixel."""
    if not store.has_rows():
        return pd.DataFrame(columns=["dataset", *QUALITY_COLUMNS, "run_id"])
    runs = store.query(_QUALITY_SQL, [dataset, dataset])
    return runs[["dataset", *QUALITY_COLUMNS, "run_id"]].astype({"n": int, "seed": int})


def render_quality(table: pd.DataFrame, fmt: str = "markdown") -> str:
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return table.to_json(orient="records", indent=2)
    blocks = []
    for dataset, group in table.groupby("dataset", sort=False):
        blocks.append(f"### {dataset} / perturbation-set quality  (mean per-pixel MSE; KL in nats; "
                      "PGD AE <= encoder AE << EAE expected in-family)\n\n"
                      + group[QUALITY_COLUMNS].to_markdown(index=False, floatfmt=".4g"))
    return "\n\n".join(blocks)
