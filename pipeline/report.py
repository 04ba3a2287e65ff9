"""A run as one self-contained static HTML file: summary, searchable sortable feature table, feature cards.

The data travels as compact JSON inside the page; the page's script renders only the visible page of
rows and the cards opened, so a report of tens of thousands of features stays light in the browser.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
import statistics
from collections.abc import Iterator
from pathlib import Path
from textwrap import shorten

import duckdb
import pyarrow as pa

from pipeline.query import has_table, open_run
from pipeline.show import readable_pieces, token_columns

TOP_CONTEXTS = 5
NEGATIVES = 2
NEGATIVE_CHARS = 160  # negatives are shown as plain text, cut to this length
WINDOW_BEFORE, WINDOW_AFTER = 12, 8  # tokens kept around a context's strongest token
HIST_BINS = 20
TEMPLATE = Path(__file__).with_name("report_template.html")


def _tuples(con: duckdb.DuckDBPyConnection, sql: str) -> Iterator[tuple]:
    """Result rows as tuples; through Arrow columns, which is several times faster than fetchall for lists."""
    table = con.sql(sql).to_arrow_table()
    return zip(*(column.to_pylist() for column in table.columns))


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or math.isnan(x) else float(f"{x:.{digits}g}")


def window(tokens: list[str], acts: list[float], peak: float) -> list:
    """[pieces joined by U+E000, one shade digit 0-9 per piece] around the context's strongest token."""
    m = max(range(len(acts)), key=acts.__getitem__)
    start, stop = max(0, m - WINDOW_BEFORE), min(len(tokens), m + WINDOW_AFTER)
    pieces = readable_pieces(tokens)[start:stop]
    levels = [0 if a <= 0 else max(1, min(9, round(9 * a / peak))) for a in acts[start:stop]]
    if start > 0:
        pieces, levels = ["…", *pieces], [0, *levels]
    if stop < len(tokens):
        pieces, levels = [*pieces, " …"], [*levels, 0]
    return ["\ue000".join(pieces), "".join(map(str, levels))]


def report_data(uri: str) -> dict:
    """Everything the page shows, as compact JSON-able lists."""
    con = open_run(uri)
    if not has_table(con, "labels"):
        raise ValueError(f"{uri} has no labels yet (labels/*.parquet): the report needs at least one labeled shard")
    density = "lat.density" if has_table(con, "latents") else "NULL"
    join = "LEFT JOIN latents lat USING (feature_id)" if has_table(con, "latents") else ""
    # Runs labeled before naming existed have no label_source or proposals columns.
    named = {"label_source", "proposals"} <= {c[0] for c in con.sql("DESCRIBE labels").fetchall()}
    naming = "l.label_source, l.proposals" if named else "NULL, NULL"
    labels = _tuples(
        con,
        f"SELECT l.feature_id, l.label, l.score, l.status, l.error, l.alternatives, {density}, {naming} "
        f"FROM labels l {join} ORDER BY l.feature_id",
    )
    top: dict[int, list] = {}
    negatives: dict[int, list] = {}
    if has_table(con, "examples"):
        detail = token_columns(con)
        ranked = (
            "SELECT feature_id, text, activation, {detail} FROM (SELECT *, row_number() OVER "
            "(PARTITION BY feature_id ORDER BY {order}) AS r FROM examples WHERE {where}) WHERE r <= {n} "
            "ORDER BY feature_id, r"
        )
        for fid, text, act, tokens, token_acts in _tuples(
            con, ranked.format(detail=detail, order="activation DESC", where="activation > 0", n=TOP_CONTEXTS)
        ):
            top.setdefault(fid, []).append((text, act, tokens, token_acts))
        # hash(text) is a fixed but arbitrary order: a sample of negatives, the same on every build.
        for fid, text, *_ in _tuples(
            con, ranked.format(detail="NULL, NULL", order="hash(text)", where="activation <= 0", n=NEGATIVES)
        ):
            negatives.setdefault(fid, []).append(shorten(text, NEGATIVE_CHARS, placeholder=" …"))

    features, contexts = [], []
    for fid, label, score, status, error, alternatives, density, source, proposals in labels:
        alternatives = [[a["label"], _round(a["score"], 3)] for a in alternatives or []]
        proposals = [[p["label"], _round(p["train_score"], 3), p["verified"]] for p in proposals or []]
        features.append([fid, label, _round(score), status, _round(density), alternatives, error, source, proposals])
        feature_top = top.get(fid, [])
        peak = max((max(t[3]) for t in feature_top if t[3]), default=0.0) or 1.0
        shown = [
            [*window(tokens, acts, peak), _round(act, 3)]
            if tokens and acts
            else [shorten(text, NEGATIVE_CHARS), "", _round(act, 3)]
            for text, act, tokens, acts in feature_top
        ]
        contexts.append([*shown, negatives.get(fid, [])])
    return {"uri": uri, "features": features, "contexts": contexts}


def summary(features: list[list]) -> dict:
    """Counts by status, median score and a histogram of scores over [0, 1]."""
    status = [f[3] for f in features]
    scores = [f[2] for f in features if f[3] == "ok" and f[2] is not None]
    hist = [0] * HIST_BINS
    for s in scores:
        hist[min(HIST_BINS - 1, max(0, int(s * HIST_BINS)))] += 1
    return {
        "features": len(features),
        "labeled": status.count("ok"),
        "dead": status.count("dead"),
        "failed": status.count("failed"),
        "median": statistics.median(scores) if scores else None,
        "hist": hist,
    }


def histogram_svg(hist: list[int], width: int = 420, height: int = 110) -> str:
    """Inline SVG bars of the score histogram over [0, 1]."""
    top = max(hist) or 1
    bar = width / len(hist)
    bars = []
    for i, n in enumerate(hist):
        h = (height - 20) * n / top
        lo = i / len(hist)
        bars.append(
            f'<rect x="{i * bar + 1:.1f}" y="{height - 16 - h:.1f}" width="{bar - 2:.1f}" height="{h:.1f}">'
            f"<title>{lo:.2f}-{lo + 1 / len(hist):.2f}: {n} features</title></rect>"
        )
    ticks = "".join(
        f'<text x="{x * width:.0f}" y="{height - 2}" text-anchor="middle">{x:g}</text>' for x in (0, 0.5, 1)
    )
    return (
        f'<svg class="hist" viewBox="-10 0 {width + 20} {height}" width="{width + 20}" height="{height}" '
        f'role="img" aria-label="histogram of held-out scores">{"".join(bars)}{ticks}</svg>'
    )


def render_html(data: dict, sections: str = "") -> str:
    """The report page for `report_data` output; `sections`: HTML of other stages' sections (a probe's)."""
    s = summary(data["features"])
    median = f"{s['median']:.3f}" if s["median"] is not None else "n/a"
    cards = [
        ("features", s["features"]),
        ("labeled", s["labeled"]),
        ("dead", s["dead"]),
        ("failed", s["failed"]),
        ("median score", median),
    ]
    stats = "".join(f'<div class="stat"><b>{v}</b><span>{k}</span></div>' for k, v in cards)
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    # Gzipped and base64-encoded: a third of the size of the JSON; the page inflates it with DecompressionStream.
    payload = base64.b64encode(gzip.compress(payload, compresslevel=9, mtime=0)).decode()
    return (
        TEMPLATE.read_text(encoding="utf-8")
        .replace("__TITLE__", html.escape(data["uri"]))
        .replace("__STATS__", stats)
        .replace("__HIST__", histogram_svg(s["hist"]))
        .replace("__SECTIONS__", sections)
        .replace("__DATA__", payload)
    )


def probe_section(uri: str) -> dict:
    """What the report shows of a probe (`toklabel probe`): its results, and per class the interpreted
    classifier's top features with their labels."""
    from pipeline.probe import RESULT_KEYS, read_probe  # the probe stage pulls in scikit-learn and torch

    summary, manifest, results, top = read_probe(uri)
    chosen = manifest["interpreted"]
    classes: dict[str, list] = {c: [] for c in manifest["classes"]}
    for r in top.to_pylist():
        if r["interpreted"]:
            classes[r["class"]].append(
                [
                    r["feature_id"],
                    r["label"],
                    r["label_status"],
                    _round(r["weight"], 3),
                    _round(r["label_score"], 3),
                    r["names_class"],
                    r["example"],
                ]
            )
    return {
        "uri": uri,
        "dataset": summary["dataset"],
        "texts": manifest["texts"],
        "n_test": manifest["n_test"],
        "chosen": [chosen["method"], chosen["pooling"], chosen["binarised"]],
        "results": [[r[k] for k in RESULT_KEYS] for r in summary["results"]],
        "cv": [r["cv_macro_f1"] for r in results.to_pylist()],
        "classes": classes,
        "named": manifest["named"],
    }


def weights_svg(rows: list[list], top: float, width: int = 420, bar: int = 16) -> str:
    """Horizontal bars of one class's top feature weights (scaled to `top`), each named by its label."""
    text_width, parts = 230, []
    for i, (fid, label, status, weight, score, named, example) in enumerate(rows):
        y = i * (bar + 4)
        w = (width - text_width - 40) * max(weight, 0) / (top or 1)
        cls = "nolabel" if not label else "named" if named else ""
        name = f"{label} ({score:.2f})" if label and score is not None else label or f"no label ({status})"
        tip = f"feature {fid}: {name}; weight {weight}" + (f"; top example: {example}" if example else "")
        name = name if len(name) <= 32 else name[:31] + "…"
        parts.append(
            f'<g><title>{html.escape(tip)}</title><text x="0" y="{y + bar - 4}">#{fid} {html.escape(name)}'
            f'</text><rect class="{cls}" x="{text_width}" y="{y + 1}" width="{w:.1f}" height="{bar - 2}"></rect>'
            f'<text class="w" x="{text_width + w + 4:.1f}" y="{y + bar - 4}">{weight:.2f}</text></g>'
        )
    height = max(1, len(rows)) * (bar + 4)
    return (
        f'<svg class="weights" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="top feature weights">{"".join(parts)}</svg>'
    )


def probe_html(p: dict) -> str:
    """The probe's section: the comparison table, and a bar chart of top feature weights per class."""
    best = max(r[3] for r in p["results"]) or 1.0
    rows = []
    for (method, pooling, binarised, f1, acc), cv in zip(p["results"], p["cv"]):
        mark = ' class="best"' if [method, pooling, binarised] == p["chosen"] else ""
        cells = [method, pooling or "–", "–" if binarised is None else "yes" if binarised else "no"]
        bar = f'<span class="f1bar" style="width:{60 * f1 / best:.0f}px"></span>'
        rows.append(
            f"<tr{mark}>"
            + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
            + f'<td class="num">{f1:.3f}{bar}</td><td class="num">{acc:.3f}</td><td class="num">{cv:.3f}</td></tr>'
        )
    top = max((r[3] for rs in p["classes"].values() for r in rs), default=1.0)
    charts = []
    for c, feats in p["classes"].items():
        named = p["named"].get(c)
        judged = f" · {named} of {len(feats)} labels name it" if named is not None else ""
        charts.append(f'<div class="probe-class"><h3>{html.escape(c)}{judged}</h3>{weights_svg(feats, top)}</div>')
    method, pooling, binarised = p["chosen"]
    chosen = f"{method} {pooling}" + (" binarised" if binarised else "")
    return (
        f'<section class="probe"><h2>Probe: {html.escape(p["dataset"])}</h2>'
        f'<div class="meta">{p["texts"]} texts, macro F1 and accuracy on {p["n_test"]} held out · '
        f"{html.escape(p['uri'])}</div><table><thead><tr><th>method</th><th>pooling</th><th>binarised</th>"
        f"<th>macro F1</th><th>accuracy</th><th>CV macro F1</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f'<div class="meta">Top features per class of {html.escape(chosen)} (best CV macro F1), by weight; '
        "orange: the label names the class, dashed: the feature has no label.</div>"
        f'<div class="probe-classes">{"".join(charts)}</div></section>'
    )


BCOS_EXAMPLES = 12  # test texts shown with their B-cos explanation: the first of each class, at most this many
PROBE_FEATURES = 5  # per text: its strongest SAE features, and the probe's top features of its class it has


def bcos_section(uri: str, probe: str | None, labels: dict[int, tuple]) -> dict:
    """What the report shows of a B-cos run (`toklabel bcos train`): both models' scores, and test texts with
    their B-cos contributions; with a probe of the same texts, each text's SAE features as the probe reads them
    (`labels`: the run's {feature_id: (label, score)})."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from pipeline.bcos import read_bcos  # the B-cos stage pulls in torch and Ray Train
    from pipeline.probe import FEATURES, SETTINGS, read_probe
    from pipeline.storage import RunStore
    from workers.probe import column

    summary, manifest, test = read_bcos(uri)
    shown, seen = [], set()
    for r in test.to_pylist():
        if r["label"] not in seen and len(shown) < BCOS_EXAMPLES:
            seen.add(r["label"])
            shown.append(r)
    section = {
        "uri": uri,
        "dataset": summary["dataset"],
        "n_test": manifest["n_test"],
        "b": manifest["settings"]["b"],
        "results": [[r["method"], r["accuracy"], r["macro_f1"]] for r in summary["results"]],
        "examples": [],
        "probe": None,
    }
    views: dict[int, dict] = {}
    if probe:
        psummary, pmanifest, _, top = read_probe(probe)
        chosen = pmanifest["interpreted"]
        name = f"sae {chosen['pooling']}" + (" binarised" if chosen["binarised"] else "")
        results = {(r["method"], r["pooling"], r["binarised"]): r for r in psummary["results"]}
        best = results[(chosen["method"], chosen["pooling"], chosen["binarised"])]
        baselines = [[m, results[(m, None, None)]] for m in ("hidden-mean", "tfidf") if (m, None, None) in results]
        section["results"] += [[f"probe: {name}", best["accuracy"], best["macro_f1"]]]
        section["results"] += [[f"probe baseline: {m}", r["accuracy"], r["macro_f1"]] for m, r in baselines]
        same = RunStore(probe).read_json(SETTINGS)["features"]["texts_sha256"] == manifest["key"]["texts_sha256"]
        section["probe"] = {"uri": probe, "classifier": name, "same_texts": same}
        if same:
            store = RunStore(probe)
            rows = pa.array([r["row"] for r in shown], pa.int64())
            feats = store.dataset(FEATURES).to_table(
                columns=["row", "sae_ids", column(chosen["pooling"])], filter=pc.is_in(ds.field("row"), rows)
            )
            weights: dict[str, dict[int, float]] = {}
            for t in top.to_pylist():
                if t["interpreted"]:
                    weights.setdefault(t["class"], {})[t["feature_id"]] = t["weight"]
            threshold = pmanifest["settings"]["threshold"]
            for row, ids, values in zip(*(feats.column(c).to_pylist() for c in feats.column_names)):
                if chosen["binarised"]:
                    values = [1.0 if v > threshold else 0.0 for v in values]
                views[row] = {"values": dict(zip(ids, values)), "weights": weights}
    for r in shown:
        peak = max((abs(c) for c in r["contributions"]), default=0.0) or 1.0
        pieces = readable_pieces(r["tokens"])
        example = {
            "label": r["label"],
            "predicted": r["bcos_class"],
            "probability": _round(r["bcos_probability"], 3),
            "logit": _round(r["logit"], 4),
            "pieces": pieces,
            "shades": [_round(c / peak, 2) for c in r["contributions"]],
            "contributions": [_round(c, 3) for c in r["contributions"]],
            "features": None,
        }
        view = views.get(r["row"])
        if view:
            active = {fid: v for fid, v in view["values"].items() if v > 0}
            strongest = sorted(active, key=lambda f: (-active[f], f))[:PROBE_FEATURES]
            weights = view["weights"].get(r["label"], {})
            evidence = sorted((f for f in weights if f in active), key=lambda f: (-weights[f] * active[f], f))
            example["features"] = {
                "strongest": [[f, *labels.get(f, (None, None)), _round(active[f], 3)] for f in strongest],
                "class": [
                    [f, *labels.get(f, (None, None)), _round(active[f], 3), _round(weights[f], 3)]
                    for f in evidence[:PROBE_FEATURES]
                ],
            }
        section["examples"].append(example)
    return section


def _feature_chip(fid: int, label: str | None, score: float | None, value: float, weight: float | None = None) -> str:
    name = html.escape(label) if label else "<i>no label</i>"
    tip = f"feature {fid}" + (f", held-out AUROC {score:.2f}" if score is not None else "") + f"; value {value}"
    tip += f"; weight {weight}" if weight is not None else ""
    return f'<span class="chip" title="{html.escape(tip)}">#{fid} {name}</span>'


def bcos_html(b: dict) -> str:
    """The B-cos section: scores of every classifier, then test texts shaded by contribution, each beside the
    probe's view of its SAE features."""
    rows = "".join(
        f'<tr><td>{html.escape(m)}</td><td class="num">{acc:.3f}</td><td class="num">{f1:.3f}</td></tr>'
        for m, acc, f1 in b["results"]
    )
    probe = b["probe"]
    if probe is None:
        note = "Run the report with --probe (a probe of the same dataset) to see each text's SAE features beside it."
    elif not probe["same_texts"]:
        note = f"The probe at {html.escape(probe['uri'])} was fitted on other texts: no feature view."
    else:
        note = (
            f"Beside each text: the probe's classifier ({html.escape(probe['classifier'])}) reads the text's SAE "
            "features; its strongest features, and those among the top features of the text's class."
        )
    cards = []
    for e in b["examples"]:
        spans = "".join(
            f'<span class="tok" style="background:{_shade(s)}" title="{c:+.3f}">{html.escape(p)}</span>'
            if p.strip()
            else html.escape(p)
            for p, s, c in zip(e["pieces"], e["shades"], e["contributions"])
        )
        verdict = "" if e["predicted"] == e["label"] else ' class="wrong"'
        side = ""
        if e["features"]:
            strongest = "".join(_feature_chip(*f) for f in e["features"]["strongest"]) or "none"
            evidence = "".join(_feature_chip(*f) for f in e["features"]["class"]) or "none of them"
            side = (
                f'<div class="bcos-feats"><div>strongest SAE features: {strongest}</div>'
                f"<div>top features of {html.escape(e['label'])} in it: {evidence}</div></div>"
            )
        cards.append(
            f'<div class="bcos-example"><div class="meta">{html.escape(e["label"])} · B-cos predicts '
            f"<b{verdict}>{html.escape(e['predicted'])}</b> (p = {e['probability']}), logit {e['logit']} = sum of "
            f'the contributions</div><div class="bcos-text">{spans}</div>{side}</div>'
        )
    return (
        f'<section class="probe bcos"><h2>B-cos: {html.escape(b["dataset"])}</h2>'
        f'<div class="meta">accuracy and macro F1 on {b["n_test"]} held-out texts (the probe\'s split) · '
        f"B = {b['b']} · {html.escape(b['uri'])}</div><table><thead><tr><th>classifier</th><th>accuracy</th>"
        f"<th>macro F1</th></tr></thead><tbody>{rows}</tbody></table>"
        f'<div class="meta">Test texts, one per class: each token shaded by its exact contribution to the predicted '
        f"class's logit (orange for, blue against). {note}</div>{''.join(cards)}</section>"
    )


def _shade(s: float) -> str:
    """Background of a token with contribution s in [-1, 1] (relative to the text's largest)."""
    rgb = "217,115,13" if s > 0 else "40,110,220"
    return f"rgba({rgb},{abs(s) * 0.85:.2f})"


def write_report(uri: str, out: str, probe: str | None = None, bcos: str | None = None) -> int:
    """Write the report of the run at `uri` (with the sections of the probe at `probe` and of the B-cos models at
    `bcos`) to the file `out`; its size in bytes."""
    data = report_data(uri)
    sections = probe_html(probe_section(probe)) if probe else ""
    if bcos:
        labels = {f[0]: (f[1], f[2]) for f in data["features"]}
        sections += bcos_html(bcos_section(bcos, probe, labels))
    page = render_html(data, sections=sections)
    Path(out).write_text(page, encoding="utf-8")
    return len(page.encode())
