"""The `toklabel` command line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import duckdb
import yaml

from pipeline import driver, export, report, show
from pipeline.config import DEMO_CONFIG, RunConfig
from pipeline.query import FORMATS, RunNotFound, is_complete, query, write_result
from pipeline.summary import summary

OVERRIDABLE = [f for f in dataclasses.fields(RunConfig) if f.name not in ("extra", "out")]


def flag_value(field: dataclasses.Field):
    """How a --flag's text becomes the value of config key `field`: as written for text keys (so a template
    "{label}", a path or "yes" stay text), else as YAML (3, 0.5, [1, 5], true), text again where YAML reads a
    mapping, which no key takes."""
    if field.type in ("str", "str | None"):
        return str

    def parse(text: str):
        value = yaml.safe_load(text)
        return text if isinstance(value, dict) else value

    return parse


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per config key (see `flag_value` for how values are read)."""
    group = parser.add_argument_group("config overrides (see the run config keys)")
    for f in OVERRIDABLE:
        group.add_argument(
            f"--{f.name.replace('_', '-')}", dest=f.name, type=flag_value(f), default=None, metavar="VALUE"
        )


def overrides(args: argparse.Namespace) -> dict:
    return {f.name: getattr(args, f.name) for f in OVERRIDABLE if getattr(args, f.name, None) is not None}


def cmd_demo(args) -> None:
    config = RunConfig.from_yaml(DEMO_CONFIG, out=args.out, **overrides(args))
    print(
        f"toklabel demo: labeling the demo SAE ({config.sae}) over the demo corpus, output in {config.out}",
        file=sys.stderr,
    )
    print(summary(driver.run(config, args.address)))


def cmd_eval(args) -> None:
    from pipeline import evaluate

    config = RunConfig.from_yaml(DEMO_CONFIG, out=args.out, **{"features": "all", **overrides(args)})
    baselines = tuple(b for b in args.baselines.split(",") if b)
    results = evaluate.evaluate(config, sentences=args.sentences, baselines=baselines, address=args.address)
    print(evaluate.markdown(results))
    print(f"wrote {args.out}/eval.md and {args.out}/eval.json", file=sys.stderr)


def cmd_run(args) -> None:
    config = RunConfig.from_yaml(args.config, out=args.out, **overrides(args))
    print(summary(driver.run(config, args.address)))


def cmd_label(args) -> None:
    config = RunConfig.from_dict({"out": args.out, **overrides(args)}, source="command line")
    print(summary(driver.label_examples(args.examples, config, args.address)))


def cmd_status(args) -> None:
    from pipeline.status import format_status, run_status

    print(format_status(run_status(args.uri)))


def cmd_submit(args) -> None:
    from pipeline import submit

    config = RunConfig.from_yaml(args.config, out=args.out, **overrides(args))
    jobs, job_id = submit.submit(config, args.address, forward_credentials=args.forward_credentials)
    print(job_id)
    if args.follow:
        status = submit.follow(jobs, job_id)
        print(f"job {job_id}: {status}", file=sys.stderr)
        if status != "SUCCEEDED":
            raise ValueError(f"job {job_id} ended {status}")


def warn_if_partial(uri: str) -> None:
    if not is_complete(uri):
        print(f"warning: {uri} has no manifest: the run is unfinished, results are partial", file=sys.stderr)


def cmd_query(args) -> None:
    if args.format == "parquet" and not args.output:
        raise ValueError("--format parquet writes a file: give one with -o FILE")
    result = query(args.uri, args.sql)
    warn_if_partial(args.uri)
    write_result(result, args.format, args.output, max_width=args.max_width)


def cmd_show(args) -> None:
    feature = show.load_feature(args.uri, args.feature_id, top=args.top)
    warn_if_partial(args.uri)
    color = sys.stdout.isatty() if args.color == "auto" else args.color == "always"
    print(show.render(feature, color=color))


def cmd_report(args) -> None:
    size = report.write_report(args.uri, args.output, probe=args.probe, bcos=args.bcos)
    warn_if_partial(args.uri)
    print(f"wrote {args.output} ({size / 1e6:.2f} MB)")


def cmd_probe(args) -> None:
    from pipeline import probe
    from workers.probe import ClassifierConfig

    classifier = ClassifierConfig(test_fraction=args.test_fraction, folds=args.folds, seed=args.seed)
    options = {k: getattr(args, k) for k in ("text_col", "label_col", "out", "top_n", "threshold", "context_length")}
    options |= {k: getattr(args, k) for k in ("max_texts", "top_features", "accept", "actors")}
    config = probe.ProbeConfig(run=args.uri, dataset=args.dataset, classifier=classifier, **options)
    manifest, text = probe.probe(config, args.address)
    print(text)
    print(f"outputs in {manifest['uri']}", file=sys.stderr)


def cmd_bcos(args) -> None:
    from pipeline import bcos

    bcos.COMMANDS[args.bcos_command](args)


def cmd_export(args) -> None:
    if args.target == "neuronpedia":
        n = export.write_neuronpedia(args.uri, args.output, model_id=args.model_id, source=args.source)
    else:
        n = export.write_delphi(args.uri, args.output, module=args.module)
    warn_if_partial(args.uri)
    print(f"exported {n} labeled features" + (f" to {args.output}" if args.output else ""), file=sys.stderr)


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

    ev = sub.add_parser(
        "eval",
        help="label accuracy on planted and ground-truth features, baselines, median AUROC: one table",
        description="Evaluate labeling on the demo SAE (every latent unless --features) and on features planted "
        "from the WordNet evaluation set (data/eval); writes eval.md and eval.json under --out.",
    )
    ev.add_argument("--out", default="runs/eval", help="output folder, local (default: runs/eval)")
    ev.add_argument("--sentences", type=int, default=None, help="use the first N evaluation sentences (default: all)")
    ev.add_argument(
        "--baselines",
        default="exhaustive,top-token,decoder-token",
        help="comma-separated baselines to score (default: all three; empty: none)",
    )
    ev.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    add_config_flags(ev)
    ev.set_defaults(func=cmd_eval)

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
    q.add_argument("--max-width", type=int, default=60, help="cut cells longer than this (table format)")
    q.add_argument(
        "--format", choices=FORMATS, default="table", help="table (default), csv, json (one object per line), parquet"
    )
    q.add_argument("-o", "--output", default=None, help="write to this file instead of stdout (needed for parquet)")
    q.set_defaults(func=cmd_query)

    sh = sub.add_parser("show", help="one feature: label, alternatives, score, density, top contexts")
    sh.add_argument("uri", help="run directory or s3:// URI")
    sh.add_argument("feature_id", type=int, help="feature id")
    sh.add_argument("--top", type=int, default=8, help="top activating contexts to show")
    sh.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto", help="shade tokens (auto: on a tty)"
    )
    sh.set_defaults(func=cmd_show)

    rep = sub.add_parser("report", help="static HTML report of a run (one self-contained file)")
    rep.add_argument("uri", help="run directory or s3:// URI")
    rep.add_argument("-o", "--output", required=True, help="HTML file to write")
    rep.add_argument("--probe", default=None, help="a probe's URI (toklabel probe): adds its section")
    rep.add_argument(
        "--bcos", default=None, help="a B-cos run's URI (toklabel bcos train): adds its explained test texts"
    )
    rep.set_defaults(func=cmd_report)

    pr = sub.add_parser(
        "probe",
        help="classifiers over pooled SAE features of labeled texts, top features shown with their labels",
        description="Encode a labeled dataset with the run's subject model and SAE (on Ray), pool each text's SAE "
        "features, fit class-balanced logistic regressions (SAE features per pooling, with and without "
        "binarisation; hidden-state and TF-IDF baselines), and join each class's top features with the run's labels.",
    )
    pr.add_argument("uri", help="the labeled run: directory or s3:// URI")
    pr.add_argument("--dataset", required=True, help=".jsonl / .parquet with text and label columns, or hf:NAME")
    pr.add_argument("--text-col", default="text", help="column holding the text (default: text)")
    pr.add_argument("--label-col", default="label", help="column holding the class (default: label)")
    pr.add_argument("--out", default=None, help="the probe's directory or s3:// URI (default: URI/probes/DATASET)")
    pr.add_argument("--top-n", type=int, default=5, help="top-n pooling: latents counted per token (default: 5)")
    pr.add_argument("--threshold", type=float, default=1.0, help="binarised features: value > this (default: 1.0)")
    pr.add_argument("--context-length", type=int, default=None, help="tokens read per text (default: the run's)")
    pr.add_argument("--max-texts", type=int, default=None, help="use the first N texts (needed for hf: datasets)")
    pr.add_argument("--top-features", type=int, default=10, help="features per class shown with labels (default: 10)")
    pr.add_argument("--accept", default=None, help="JSON of labels naming each class (default: shipped datasets' own)")
    pr.add_argument("--test-fraction", type=float, default=0.2, help="stratified test split (default: 0.2)")
    pr.add_argument("--folds", type=int, default=5, help="stratified CV folds choosing C (default: 5)")
    pr.add_argument("--seed", type=int, default=0, help="seed of the split and the folds (default: 0)")
    pr.add_argument("--actors", type=int, default=None, help="feature-extraction actors (default: one per 2 CPUs)")
    pr.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    pr.set_defaults(func=cmd_probe)

    bc = sub.add_parser(
        "bcos",
        help="B-cos language models: fine-tuned classifiers whose token explanations are exact",
        description="Convert a BERT-family encoder to a B-cos network while fine-tuning it on a labeled dataset (and "
        "fine-tune the conventional model with the same recipe), on Ray Train; explain its predictions token by token.",
    )
    bcos_commands = bc.add_subparsers(dest="bcos_command", required=True)
    bt = bcos_commands.add_parser("train", help="fine-tune the B-cos and the conventional model; score both")
    bt.add_argument("--dataset", required=True, help=".jsonl / .parquet with text and label columns, or hf:NAME")
    bt.add_argument("--text-col", default="text", help="column holding the text (default: text)")
    bt.add_argument("--label-col", default="label", help="column holding the class (default: label)")
    bt.add_argument("--out", required=True, help="output directory or s3:// URI (a rerun there resumes)")
    bt.add_argument("--model", default=None, help="BERT-family checkpoint: alias, folder or hub name (default: minilm)")
    bt.add_argument("--b", type=float, default=None, help="B of the B-cos layers, >= 1 (default: 1.5)")
    bt.add_argument("--epochs", type=int, default=None, help="epochs (default: 3)")
    bt.add_argument("--batch", type=int, default=None, help="texts per step over all workers (default: 32)")
    bt.add_argument("--lr", type=float, default=None, help="peak learning rate of AdamW (default: 5e-4)")
    bt.add_argument("--max-length", type=int, default=None, help="tokens per text with [CLS]/[SEP] (default: 64)")
    bt.add_argument("--test-fraction", type=float, default=None, help="stratified test split (default: 0.2)")
    bt.add_argument("--seed", type=int, default=None, help="seed of split, data order, head, dropout (default: 0)")
    bt.add_argument("--max-texts", type=int, default=None, help="use the first N texts (needed for hf: datasets)")
    bt.add_argument("--workers", type=int, default=None, help="Ray Train workers, data parallel (default: 1)")
    bt.add_argument("--gpu", action="store_true", default=None, help="one GPU per worker")
    bt.add_argument("--cpus-per-worker", type=int, default=None, help="CPUs (torch threads) per worker (default: 1)")
    bt.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default: an epoch)")
    bt.add_argument("--max-failures", type=int, default=None, help="worker failures recovered from (default: 3)")
    bt.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    bt.set_defaults(func=cmd_bcos)
    be = bcos_commands.add_parser("explain", help="a text's tokens shaded by their contribution to the logit")
    be.add_argument("uri", help="output of toklabel bcos train: directory or s3:// URI")
    be.add_argument("text", help="the text to classify and explain")
    be.add_argument("--class", default=None, help="explain this class's logit (default: the predicted class)")
    be.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto", help="shade tokens (auto: on a tty)"
    )
    be.set_defaults(func=cmd_bcos)

    ex = sub.add_parser("export", help="labels out to other tools")
    targets = ex.add_subparsers(dest="target", required=True)
    np_ = targets.add_parser("neuronpedia", help="Neuronpedia explanation JSONL")
    np_.add_argument("uri", help="run directory or s3:// URI")
    np_.add_argument("-o", "--output", default=None, help="JSONL file (default: stdout)")
    np_.add_argument("--model-id", default=None, help="Neuronpedia model id (default: the run's subject model)")
    np_.add_argument("--source", default=None, help="Neuronpedia source id, e.g. 3-res-topk (default: from the hook)")
    np_.set_defaults(func=cmd_export)
    de = targets.add_parser("delphi", help="delphi's explanations/ folder")
    de.add_argument("uri", help="run directory or s3:// URI")
    de.add_argument("-o", "--output", required=True, help="delphi run folder; files go to OUTPUT/explanations/")
    de.add_argument("--module", default=None, help="module name in the file names (default: the run's hook)")
    de.set_defaults(func=cmd_export)

    st = sub.add_parser("status", help="shards planned / done / pending / failed and features labeled")
    st.add_argument("uri", help="run directory or s3:// URI")
    st.set_defaults(func=cmd_status)

    sm = sub.add_parser("submit", help="run a config as a Ray Job on a running cluster")
    sm.add_argument("config", help="run config YAML")
    sm.add_argument("--address", required=True, help="the cluster's dashboard, like http://HOST:8265")
    sm.add_argument("--out", default=None, help="run directory or s3:// URI (overrides the config)")
    sm.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    sm.add_argument(
        "--forward-credentials",
        action="store_true",
        help="pass this shell's AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY to the job (default: the cluster's own)",
    )
    add_config_flags(sm)
    sm.set_defaults(func=cmd_submit)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RunNotFound, duckdb.Error) as err:
        print(f"toklabel {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader closed the pipe (`toklabel query ... | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
