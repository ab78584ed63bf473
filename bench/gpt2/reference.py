#!/usr/bin/env python3
"""PyTorch eager reference for baton's GPT-2 benchmark: transformers' GPT2LMHeadModel.

Runs the same work as baton's gpt2Train / gpt2Infer jobs (bench/gpt2/*.json) and prints
the same figures as JSON (field names as in baton's reports):

  train: a step is data (random ids), forward + loss, backward, clip + AdamW
         (timed separately); warm-up steps are left out of the statistics.
  infer: greedy generation with the KV cache, a token at a time: time to first token
         (prompt forward + first token), time per output token, tokens/s; plus the
         tokens/s of model.generate() for the same work.

usage:
  reference.py train --batch 1 --seq-len 128 --steps 10 --warmup-steps 2 --threads 2
  reference.py infer --new-tokens 64 --threads 2 [--prompt-ids 464,2068,...]
  add --json-out FILE to write the JSON to a file as well.
"""
import argparse
import json
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

# The 16-token prompt of bench/gpt2/infer-64.json.
DEFAULT_PROMPT = "464,2068,7586,21831,18045,625,262,16931,3290,13,383,2068,7586,21831,318,257"
PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}


def stats(ms):
    """count, mean and percentiles (linear interpolation, as numpy) in milliseconds."""
    if not ms:
        return {"count": 0}
    s = sorted(ms)

    def pct(q):
        rank = q / 100 * (len(s) - 1)
        lo, hi = int(rank), min(int(rank) + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (rank - lo)

    return {
        "count": len(s),
        "meanMs": sum(s) / len(s),
        "p50Ms": pct(50),
        "p90Ms": pct(90),
        "p99Ms": pct(99),
        "minMs": s[0],
        "maxMs": s[-1],
    }


def now_ms():
    return time.perf_counter() * 1000.0


def model_for(args):
    config = GPT2Config(**PRESETS[args.model])
    if args.dropout is not None:
        config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = args.dropout
    return GPT2LMHeadModel(config), config


def train(args):
    model, config = model_for(args)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    kwargs = {}
    if args.adamw_impl == "foreach":
        kwargs["foreach"] = True
    elif args.adamw_impl == "fused":
        kwargs["fused"] = True
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=6e-4, betas=(0.9, 0.95), eps=1e-8, **kwargs)
    params = list(model.parameters())
    B, T, V = args.batch, args.seq_len, config.vocab_size
    phases = {k: [] for k in ("step", "data", "forward", "backward", "optimizer")}
    losses = []
    for i in range(args.warmup_steps + args.steps):
        t0 = now_ms()
        ids = torch.randint(0, V, (B, T + 1))
        inp, target = ids[:, :T], ids[:, 1:]
        t1 = now_ms()
        logits = model(inp).logits
        loss = F.cross_entropy(logits.view(-1, V), target.reshape(-1))
        t2 = now_ms()
        loss.backward()
        t3 = now_ms()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = now_ms()
        losses.append(loss.item())
        if i >= args.warmup_steps:
            for k, v in zip(phases, (t4 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                phases[k].append(v)
        print(f"step {i + 1}: {t4 - t0:.0f} ms loss {losses[-1]:.3f}", file=sys.stderr)
    out = {k: stats(v) for k, v in phases.items()}
    out["tokensPerS"] = B * T / (out["step"]["meanMs"] / 1000)
    out["loss"] = losses
    out["adamwImpl"] = args.adamw_impl
    return out


@torch.no_grad()
def infer(args):
    model, _ = model_for(args)
    model.eval()
    prompt = torch.tensor([[int(x) for x in args.prompt_ids.split(",")]])

    def one_run():
        tokens, tpot = [], []
        t0 = now_ms()
        out = model(prompt, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(nxt.item())
        ttft = now_ms() - t0
        past = out.past_key_values
        for _ in range(args.new_tokens - 1):
            t = now_ms()
            out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(nxt.item())
            tpot.append(now_ms() - t)
        return tokens, ttft, tpot, now_ms() - t0

    for _ in range(args.warmup_runs):
        one_run()
    tokens, ttft, tpot, total = one_run()
    t0 = now_ms()
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                               min_new_tokens=args.new_tokens, do_sample=False, use_cache=True, pad_token_id=0)
    generate_ms = now_ms() - t0
    return {
        "ttftMs": ttft,
        "tpot": stats(tpot),
        "tokensPerS": args.new_tokens / (total / 1000),
        "totalMs": total,
        "generateTokensPerS": args.new_tokens / (generate_ms / 1000),
        "tokenIds": tokens,
        "generateTokenIds": generated[0, prompt.shape[1]:].tolist(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["train", "infer"])
    ap.add_argument("--model", default="gpt2", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--adamw-impl", choices=["default", "foreach", "fused"], default="default",
                    help="torch.optim.AdamW implementation (default: torch's choice, a for-loop on CPU)")
    ap.add_argument("--dropout", type=float, default=None, help="override every dropout (default: config's 0.1)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-ids", default=DEFAULT_PROMPT)
    ap.add_argument("--warmup-runs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    result = train(args) if args.mode == "train" else infer(args)
    result["config"] = {
        "mode": args.mode,
        "model": args.model,
        "batch": args.batch,
        "seqLen": args.seq_len,
        "steps": args.steps,
        "warmupSteps": args.warmup_steps,
        "newTokens": args.new_tokens,
        "threads": torch.get_num_threads(),
        "interopThreads": torch.get_num_interop_threads(),
        "seed": args.seed,
        "dtype": "fp32",
        "device": "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "attnImplementation": "sdpa",
        # Memory settings the runner may start it with (bench-gpt2 tries eager with baton's).
        "memoryEnv": {k: os.environ[k] for k in ("THP_MEM_ALLOC_ENABLE", "GLIBC_TUNABLES") if k in os.environ},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
