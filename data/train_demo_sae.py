"""Train the shipped demo TopK SAE on MiniLM's layer-3 residual stream over the demo corpus.

HF_HUB_OFFLINE=1 python data/train_demo_sae.py
"""

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers.corpus import read_corpus  # noqa: E402
from workers.models import MINILM  # noqa: E402
from workers.sae import SAE, SAEConfig, build_sae, save_saelens  # noqa: E402
from workers.subject import SubjectModel  # noqa: E402

HOOK = "blocks.3.hook_resid_post"
MAX_LENGTH = 64
HELD_OUT = 0.1
# AuxK (Gao et al. 2024): a latent that has not fired for this many tokens counts as dead and is
# trained to reconstruct the residual error, which revives it.
DEAD_AFTER_TOKENS = 200_000
AUX_COEF = 1 / 32


def pick_texts(subject: SubjectModel, texts: list[str], max_tokens: int, seed: int) -> list[str]:
    """Return a seeded random subset of texts holding about max_tokens non-special tokens."""
    counts = subject.tokenizer(texts, truncation=True, max_length=MAX_LENGTH, return_special_tokens_mask=True)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    picked, total = [], 0
    for i in order:
        if total >= max_tokens:
            break
        picked.append(texts[i])
        total += len(counts["special_tokens_mask"][i]) - sum(counts["special_tokens_mask"][i])
    return picked


@torch.no_grad()
def collect(subject: SubjectModel, texts: list[str], batch_size: int) -> torch.Tensor:
    """Return the hook activations of every non-special token of texts, as [tokens, d_model]."""
    # Batching texts of similar length keeps padding, and so wasted compute, small.
    texts = sorted(texts, key=len)
    chunks = []
    for start in range(0, len(texts), batch_size):
        acts, mask, _ = subject.activations(texts[start : start + batch_size], MAX_LENGTH)
        chunks.append(acts[mask])
    return torch.cat(chunks)


def init_sae(acts: torch.Tensor, cfg: SAEConfig, generator: torch.Generator) -> SAE:
    """Build a TopK SAE with unit-norm decoder rows, tied encoder, and b_dec at the data mean."""
    sae = build_sae(cfg)
    with torch.no_grad():
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=generator)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_dec.T)
        sae.b_dec.copy_(acts.mean(dim=0))
    return sae


def train(sae: SAE, acts: torch.Tensor, args: argparse.Namespace, generator: torch.Generator) -> int:
    """Train sae on acts with Adam, MSE plus AuxK; return the number of steps."""
    k, d_in = sae.cfg.k, sae.cfg.d_in
    # Normalising by the data variance makes the loss read as 1 - FVE, whatever the activation scale.
    variance = (acts - acts.mean(dim=0)).pow(2).sum(dim=1).mean()
    optimizer = torch.optim.Adam(sae.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(len(acts) / args.batch_size)
    total = args.epochs * steps_per_epoch
    # Linear decay over the last fifth of training settles the weights.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, 5 * (total - s) / total))
    tokens_since_fired = torch.zeros(sae.cfg.d_sae)
    step = 0
    for epoch in range(args.epochs):
        for batch in torch.randperm(len(acts), generator=generator).split(args.batch_size):
            x = acts[batch]
            pre = sae.sae_in(x) @ sae.W_enc + sae.b_enc
            top = pre.topk(k, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
            error = x - sae.decode(z)
            loss = error.pow(2).sum(dim=1).mean() / variance
            fired = (z > 0).any(dim=0)
            tokens_since_fired = torch.where(fired, 0.0, tokens_since_fired + len(x))
            dead = tokens_since_fired > DEAD_AFTER_TOKENS
            if dead.any():
                k_aux = min(d_in // 2, int(dead.sum()))
                aux_top = pre.masked_fill(~dead, -math.inf).topk(k_aux, dim=-1)
                z_aux = torch.zeros_like(pre).scatter(-1, aux_top.indices, torch.relu(aux_top.values))
                residual = error.detach()
                aux = (residual - z_aux @ sae.W_dec).pow(2).sum(dim=1).mean() / residual.pow(2).sum(dim=1).mean()
                loss = loss + AUX_COEF * aux
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
            step += 1
            if step % 100 == 0 or step == total:
                print(f"epoch {epoch} step {step}/{total} loss {loss.item():.4f} dead {int(dead.sum())}", flush=True)
    return step


@torch.no_grad()
def evaluate(sae: SAE, acts: torch.Tensor, batch_size: int = 8192) -> dict:
    """Return FVE, mean L0 and dead-latent count of sae on acts."""
    mean = acts.mean(dim=0)
    sq_error = sq_total = l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for x in acts.split(batch_size):
        z = sae.encode(x)
        sq_error += (x - sae.decode(z)).pow(2).sum().item()
        sq_total += (x - mean).pow(2).sum().item()
        l0 += (z > 0).sum().item()
        fired |= (z > 0).any(dim=0)
    return {
        "fve": round(1 - sq_error / sq_total, 4),
        "mean_l0": round(l0 / len(acts), 2),
        "dead_latents": int((~fired).sum()),
    }


def main() -> None:
    """Collect activations, train, evaluate on held-out texts and save the SAE with its training report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "data/corpus/demo.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "data/sae/minilm-L3-topk-1536")
    parser.add_argument("--max-tokens", type=int, default=800_000)
    parser.add_argument("--d-sae", type=int, default=1536)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.time()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    subject = SubjectModel.load(MINILM, HOOK)
    texts = pick_texts(subject, read_corpus(args.corpus), args.max_tokens, args.seed)
    # Held-out whole texts, so no sentence is seen in both training and evaluation.
    n_held = max(1, int(len(texts) * HELD_OUT))
    held_acts = collect(subject, texts[:n_held], batch_size=128)
    train_acts = collect(subject, texts[n_held:], batch_size=128)
    collected = time.time()
    print(f"collected {len(train_acts)} train / {len(held_acts)} held-out tokens in {collected - started:.0f}s")

    cfg = SAEConfig(
        architecture="topk",
        d_in=subject.d_model,
        d_sae=args.d_sae,
        model_name=MINILM,
        hook_name=HOOK,
        k=args.k,
        extra={"context_size": MAX_LENGTH, "dataset_path": "data/corpus/demo.jsonl", "exclude_special_tokens": True},
    )
    sae = init_sae(train_acts, cfg, generator)
    steps = train(sae, train_acts, args, generator)
    metrics = evaluate(sae, held_acts)
    report = {
        "model_name": MINILM,
        "hook_name": HOOK,
        "texts": len(texts),
        "tokens_train": len(train_acts),
        "tokens_held_out": len(held_acts),
        "max_length": MAX_LENGTH,
        "architecture": "topk",
        "d_sae": args.d_sae,
        "k": args.k,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "steps": steps,
        **metrics,
        "seconds_collect": round(collected - started, 1),
        "seconds": round(time.time() - started, 1),
    }
    save_saelens(sae, args.out)
    (args.out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
