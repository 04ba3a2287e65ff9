"""The summary printed at the end of a run: counts, speed, median score and sample labels."""

from __future__ import annotations

from pipeline.driver import RunResult
from pipeline.progress import format_seconds
from pipeline.query import format_table, open_run


def summary(result: RunResult) -> str:
    """Counts, speed, median score and ten sample labels of a finished run."""
    run = open_run(result.uri)  # one connection (one listing of the run's files) for the three queries
    rows = run.sql("SELECT status, count(*) AS n FROM labels GROUP BY status").to_arrow_table().to_pylist()
    counts = {r["status"]: r["n"] for r in rows}
    ok = counts.get("ok", 0)
    median = run.sql("SELECT median(score) AS m FROM labels WHERE status = 'ok'").fetchall()[0][0]
    named = "label_source" in {c[0] for c in run.sql("DESCRIBE labels").fetchall()}
    source = "label_source AS source" if named else "NULL AS source"
    sample = run.sql(
        f"SELECT feature_id, label, round(score, 3) AS score, {source}, alternatives[2].label AS runner_up "
        "FROM labels WHERE status = 'ok' ORDER BY hash(feature_id) LIMIT 10"
    ).to_arrow_table()
    by_namer = run.sql("SELECT count(*) FROM labels WHERE label_source = 'namer'").fetchall()[0][0] if named else 0
    label_s = result.seconds.get("label", 0.0)
    rate = f"{ok / label_s * 60:.1f}" if label_s > 0 else "n/a"
    median_text = f"{median:.3f}" if median is not None else "n/a"
    lines = [
        "",
        f"features labeled  {ok} of {result.features}",
        f"dead latents      {counts.get('dead', 0)}",
        f"failed            {counts.get('failed', 0)}",
        f"time              harvest {format_seconds(result.seconds.get('harvest', 0))}, "
        f"label {format_seconds(label_s)}",
        f"features/min      {rate} (labeling)",
        f"median score      {median_text} (held-out ROC AUC)",
        f"named             {by_namer} labels proposed by the namer and verified",
        "",
        format_table(sample.sort_by([("score", "descending")])),
        "",
        f"outputs           {result.uri}",
        f"query them with   toklabel query {result.uri} "
        '"SELECT feature_id, label, score FROM labels ORDER BY score DESC LIMIT 20"',
    ]
    return "\n".join(lines)
