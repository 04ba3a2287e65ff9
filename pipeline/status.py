"""A run's progress from its storage alone: shards planned, done, pending and failed, features labeled."""

from __future__ import annotations

import pyarrow.compute as pc

from pipeline.storage import CONFIG, FAILURES, MANIFEST, PLAN, RunStore


def run_status(uri: str) -> dict:
    """Counts of shards and features of the run at `uri` (finished or not), read from its files."""
    store = RunStore(uri)
    if not store.exists(CONFIG):
        raise FileNotFoundError(f"{uri} holds no run: no {CONFIG} there")
    done = set(store.list("labels"))
    # A run from before plans were recorded: the examples shards are the plan.
    planned = store.read_json(PLAN)["shards"] if store.exists(PLAN) else dict.fromkeys(store.list("examples"))
    failed = {n.removesuffix(".json") for n in store.list(FAILURES, suffix=".json")} - done
    pending = [n for n in planned if n not in done and n not in failed]
    labels = store.dataset("labels")
    statuses = labels.to_table(columns=["status"]).column("status") if done else None
    counts = {} if statuses is None else {r["values"]: r["counts"] for r in pc.value_counts(statuses).to_pylist()}
    return {
        "uri": uri,
        "complete": store.exists(MANIFEST),
        "shards_planned": len(planned),
        "shards_done": len(done),
        "shards_pending": len(pending),
        "shards_failed": len(failed),
        "features_planned": sum(v for v in planned.values() if v is not None) if store.exists(PLAN) else None,
        "features_labeled": sum(counts.values()),
        "features_ok": counts.get("ok", 0),
        "features_dead": counts.get("dead", 0),
        "features_failed": counts.get("failed", 0),
        "pending": sorted(pending),
        "failed": sorted(failed),
    }


def format_status(st: dict, max_listed: int = 10) -> str:
    """The status as aligned text lines."""
    planned = st["features_planned"]
    lines = [
        f"run               {st['uri']} ({'complete' if st['complete'] else 'unfinished: no manifest yet'})",
        f"shards            {st['shards_planned']} planned, {st['shards_done']} done, "
        f"{st['shards_pending']} pending, {st['shards_failed']} failed",
        f"features labeled  {st['features_labeled']}"
        + (f" of {planned}" if planned is not None else "")
        + f" (ok {st['features_ok']}, dead {st['features_dead']}, failed {st['features_failed']})",
    ]
    for key in ("pending", "failed"):
        names = st[key]
        if names:
            more = f" and {len(names) - max_listed} more" if len(names) > max_listed else ""
            lines.append(f"{key:<18}{', '.join(names[:max_listed])}{more}")
    return "\n".join(lines)
