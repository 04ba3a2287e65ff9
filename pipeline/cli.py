"""The `toklabel` command line."""

from __future__ import annotations

import argparse
import dataclasses
import sys

import duckdb
import yaml

from pipeline import driver
from pipeline.config import DEMO_CONFIG, RunConfig
from pipeline.progress import format_seconds
from pipeline.query import RunNotFound, format_table, is_complete, query

OVERRIDABLE = [f for f in dataclasses.fields(RunConfig) if f.name not in ("extra", "out")]


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per config key; values are read as YAML (so 3, 0.5, [1, 5], all all work)."""
    group = parser.add_argument_group("config overrides (see the run config keys)")
    for f in OVERRIDABLE:
        group.add_argument(
            f"--{f.name.replace('_', '-')}", dest=f.name, type=yaml.safe_load, default=None, metavar="VALUE"
        )


def overrides(args: argparse.Namespace) -> dict:
    return {f.name: getattr(args, f.name) for f in OVERRIDABLE if getattr(args, f.name, None) is not None}


def summary(result: driver.RunResult) -> str:
    """Counts, speed, median score and ten sample labels of a finished run."""
    rows = query(result.uri, "SELECT status, count(*) AS n FROM labels GROUP BY status").to_pylist()
    counts = {r["status"]: r["n"] for r in rows}
    ok = counts.get("ok", 0)
    median = query(result.uri, "SELECT median(score) AS m FROM labels WHERE status = 'ok'").column("m")[0].as_py()
    sample = query(
        result.uri,
        "SELECT feature_id, label, round(score, 3) AS score, alternatives[2].label AS runner_up "
        "FROM labels WHERE status = 'ok' ORDER BY hash(feature_id) LIMIT 10",
    )
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
        "",
        format_table(sample.sort_by([("score", "descending")])),
        "",
        f"outputs           {result.uri}",
        f"query them with   toklabel query {result.uri} "
        '"SELECT feature_id, label, score FROM labels ORDER BY score DESC LIMIT 20"',
    ]
    return "\n".join(lines)


def cmd_demo(args) -> None:
    config = RunConfig.from_yaml(DEMO_CONFIG, out=args.out, **overrides(args))
    print(
        f"toklabel demo: labeling the demo SAE ({config.sae}) over the demo corpus, output in {config.out}",
        file=sys.stderr,
    )
    print(summary(driver.run(config, args.address)))


def cmd_run(args) -> None:
    config = RunConfig.from_yaml(args.config, out=args.out, **overrides(args))
    print(summary(driver.run(config, args.address)))


def cmd_label(args) -> None:
    config = RunConfig.from_dict({"out": args.out, **overrides(args)}, source="command line")
    print(summary(driver.label_examples(args.examples, config, args.address)))


def cmd_query(args) -> None:
    if not is_complete(args.uri):
        print(f"warning: {args.uri} has no manifest: the run is unfinished, results are partial", file=sys.stderr)
    print(format_table(query(args.uri, args.sql), max_width=args.max_width))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="toklabel",
        description="Label every feature of an SAE dictionary by "
        "token-space gradient descent against a frozen language model.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="label the demo SAE on the demo corpus (offline, local Ray)")
    demo.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    demo.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    add_config_flags(demo)
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="harvest + label + score as a config file says")
    run.add_argument("config", help="run config YAML")
    run.add_argument("--out", default=None, help="run directory or s3:// URI (overrides the config)")
    run.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    add_config_flags(run)
    run.set_defaults(func=cmd_run)

    label = sub.add_parser("label", help="label features given as an examples table")
    label.add_argument("--examples", required=True, help="Parquet file or folder: feature_id, text, activation")
    label.add_argument("--out", required=True, help="run directory or s3:// URI")
    label.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    add_config_flags(label)
    label.set_defaults(func=cmd_label)

    q = sub.add_parser("query", help="SQL over a run's tables labels, examples and latents")
    q.add_argument("uri", help="run directory or s3:// URI")
    q.add_argument("sql", help='e.g. "SELECT feature_id, label, score FROM labels ORDER BY score DESC LIMIT 20"')
    q.add_argument("--max-width", type=int, default=60, help="cut cells longer than this")
    q.set_defaults(func=cmd_query)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RunNotFound, duckdb.Error) as err:
        print(f"toklabel {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
