"""How well the first-order gradient points at the right label: planted features, where each fires on the texts
that its planted word scores highest, and the rank of that word among the candidate words when candidates are
ordered by the gradient step's linear estimate (what st-gumbel's update follows), next to its rank by exact
training AUROC (what exhaustive search uses) and chance.

HF_HUB_OFFLINE=1 python bench/gradient_rank.py [--discriminator smollm2] [--texts 72] [--candidates 50]

Gradients are taken at random start words, as the descent's first step is, under four losses: the
optimiser's weighted BCE at its starting read-out, the same with the read-out (scale, bias) fitted first, so
that no common shift of all logits is left to learn, and two with no read-out at all: a pairwise ranking loss
(positive above negative) and the mean logit of negatives minus that of positives.
Prints a table and saves bench/results/gradient_rank-NAME.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from workers.corpus import DEMO_CORPUS  # noqa: E402
from workers.discriminators import discriminator_kind, load_discriminator  # noqa: E402
from workers.optimiser import class_weights  # noqa: E402
from workers.scoring import batched_auc  # noqa: E402
from workers.vocab import label_vocab  # noqa: E402

LOSSES = ("bce, start read-out", "bce, fitted read-out", "pairwise", "mean difference")


def loss(name: str, raw: torch.Tensor, positive: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The named loss of raw logits [F, n] (with a graph to the label) for positives [F, n]."""
    y = positive.float()
    if name == "mean difference":  # the mean logit of negatives minus that of positives (class weights)
        return (weight * (1 - 2 * y) * raw).sum()
    if name == "pairwise":
        pairs = (positive[:, :, None] & ~positive[:, None, :]).float()
        return (F.softplus(raw[:, None, :] - raw[:, :, None]) * pairs).sum() / pairs.sum()
    log_scale = torch.full((len(raw), 1), 2.0)  # the optimiser's starting read-out
    bias = torch.zeros(len(raw), 1)
    if name == "bce, fitted read-out":
        log_scale.requires_grad_()
        bias.requires_grad_()
        fit = torch.optim.LBFGS([log_scale, bias], max_iter=100)
        fixed = raw.detach()

        def closure():
            fit.zero_grad()
            value = F.binary_cross_entropy_with_logits(log_scale.exp() * fixed + bias, y, reduction="none") * weight
            value.sum().backward()
            return value.sum()

        fit.step(closure)
        log_scale, bias = log_scale.detach(), bias.detach()
    bce = F.binary_cross_entropy_with_logits(log_scale.exp() * raw + bias, y, reduction="none")
    return (bce * weight).sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--discriminator", default="smollm2")
    parser.add_argument("--texts", type=int, default=72, help="WordNet example sentences of the demo corpus")
    parser.add_argument("--candidates", type=int, default=50, help="random label-vocabulary words")
    parser.add_argument("--planted", type=int, default=10, help="features, each with one candidate word planted")
    parser.add_argument("--starts", type=int, default=3, help="random start words per feature")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="default: bench/results/gradient_rank-NAME.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    # Causal LMs read the plain prompt, as the planted SmolLM2 test does: four suffix tokens per pair.
    causal = discriminator_kind(args.discriminator) == "causal-lm"
    disc = load_discriminator(args.discriminator, **({"chat": False, "max_length": 24} if causal else {}))
    texts = [json.loads(line) for line in open(DEMO_CORPUS)]
    texts = [t["text"] for t in texts if t["source"] == "wordnet-example"][: args.texts]
    gen = torch.Generator().manual_seed(0)
    words = label_vocab(disc.tokenizer)
    candidates = words[torch.randperm(len(words), generator=gen)[: args.candidates]]
    planted = torch.arange(0, args.candidates, args.candidates // args.planted)[: args.planted]
    encoded = disc.encode_texts(texts)
    n = len(texts)
    with torch.no_grad():
        exact = disc.token_logits(candidates, encoded, torch.arange(n)[None])[0]  # [C, n]
    positive = torch.stack([exact[c] > exact[c].quantile(0.7) for c in planted])  # [P, n]
    valid = torch.ones_like(positive)
    weight = class_weights(positive, valid)
    auc = batched_auc(exact[None].expand(len(planted), -1, -1), positive[:, None], valid[:, None])  # [P, C]
    exact_rank = [int((auc[f] > auc[f, c]).sum()) for f, c in enumerate(planted.tolist())]

    # What a step mixes: a token's own state where the discriminator has one (one-word labels, as st-gumbel
    # uses them), else its input embedding.
    states = disc.token_states(candidates)
    rows = (disc.embed_tokens(candidates) if states is None else states).float()
    index = torch.arange(n)[None].expand(len(planted), -1)
    ranks: dict[str, list[int]] = {name: [] for name in LOSSES}
    common: dict[str, list[float]] = {name: [] for name in LOSSES}
    for _ in range(args.starts):
        start = torch.randint(0, args.candidates, (len(planted),), generator=gen)
        label = rows[start].clone().requires_grad_()
        raw = (
            disc.logits(label[:, None], encoded, index, valid)
            if states is None
            else disc.state_logits(label, encoded, index)
        )
        for name in LOSSES:
            label.grad = None
            loss(name, raw, positive, weight).backward(retain_graph=True)
            estimate = -(label.grad @ rows.T)  # [P, C]: first-order loss decrease of moving to each word
            ranks[name] += [int((estimate[f] > estimate[f, c]).sum()) for f, c in enumerate(planted.tolist())]
            # Common mode: how alike different features' estimates are (mean off-diagonal correlation).
            centred = F.normalize(estimate - estimate.mean(1, keepdim=True), dim=1)
            corr = centred @ centred.T
            common[name].append(float((corr.sum() - corr.diagonal().sum()) / (len(planted) * (len(planted) - 1))))

    chance = (args.candidates - 1) / 2
    result = {
        "discriminator": args.discriminator,
        "texts": n,
        "candidates": args.candidates,
        "planted": len(planted),
        "starts": args.starts,
        "chance_mean_rank": chance,
        "exact": {"ranks": exact_rank, "mean_rank": sum(exact_rank) / len(exact_rank)},
        "gradient": {
            name: {
                "ranks": ranks[name],
                "mean_rank": sum(ranks[name]) / len(ranks[name]),
                "top1": sum(r == 0 for r in ranks[name]),
                "top10": sum(r < 10 for r in ranks[name]),
                "feature_correlation": sum(common[name]) / len(common[name]),
            }
            for name in LOSSES
        },
    }
    trials = len(planted) * args.starts
    print(f"{args.discriminator}: rank of the planted word among {args.candidates} candidates (0 = first)")
    print(f"{'ordered by':<30} {'mean rank':>9} {'first':>8} {'top 10':>8} {'feature corr.':>13}")
    print(
        f"{'exact training AUROC':<30} {result['exact']['mean_rank']:>9.1f} "
        f"{sum(r == 0 for r in exact_rank):>4}/{len(planted):<3} {sum(r < 10 for r in exact_rank):>4}/{len(planted):<3}"
    )
    for name in LOSSES:
        g = result["gradient"][name]
        print(
            f"{'gradient, ' + name:<30} {g['mean_rank']:>9.1f} {g['top1']:>4}/{trials:<3} {g['top10']:>4}/{trials:<3} "
            f"{g['feature_correlation']:>13.2f}"
        )
    # Chance as expected counts over the gradient rows' trials.
    first, top10 = trials / args.candidates, 10 * trials / args.candidates
    print(f"{'chance':<30} {chance:>9.1f} {first:>4.1f}/{trials:<3} {top10:>4.1f}/{trials:<3}")
    out = Path(args.out or ROOT / "bench" / "results" / f"gradient_rank-{args.discriminator}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
