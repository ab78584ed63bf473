#!/usr/bin/env python3
"""PyTorch eager reference for baton's GPT-2 benchmark: transformers' GPT2LMHeadModel.

Runs the same work as baton's gpt2Train / gpt2Infer jobs (bench/gpt2/*.json) and prints
the same figures as JSON (field names as in baton's reports):

  train: a step is data (random ids), forward + loss, backward, clip + AdamW
         (timed separately); warm-up steps are left out of the statistics. bf16 is
         autocast (fp32 weights, bf16 matmuls and attention), as baton's bf16 training.
  infer: greedy generation with the KV cache, a token at a time, for --batch copies of
         the prompt: time to first token (prompt forward + first token), time per output
         token, tokens/s (batch x new tokens / whole generation); plus the tokens/s of
         model.generate() for the same work. bf16 converts the weights, as baton does.

On CUDA every phase boundary waits for the GPU (torch.cuda.synchronize), as baton's agent
does; the phases are also timed with CUDA events recorded at the same boundaries
("cudaEvents": the same figures, as baton's report has them). Peak memory is the CUDA
caching allocator's peak (torch.cuda.max_memory_allocated) on CUDA, the process's peak RSS
on CPU.

usage:
  reference.py train --batch 1 --seq-len 128 --steps 10 --warmup-steps 2 --threads 2
  reference.py infer --new-tokens 64 --threads 2 [--prompt-ids 464,2068,...] [--batch 32]
  add --device cuda and/or --dtype bf16 for the GPU and bf16 (default cpu, fp32);
  add --json-out FILE to write the JSON to a file as well.
"""
import argparse
import json
import os
import platform
import resource
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


class Clock:
    """Phase boundaries: each waits for the device (CUDA) and takes the host's time; on CUDA
    an event is recorded there too, so the phases can be timed both ways."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def mark(self):
        event = None
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            torch.cuda.synchronize()
        return now_ms(), event

    @staticmethod
    def between(a, b):
        """(host ms, event ms or None) from mark a to mark b."""
        return b[0] - a[0], (a[1].elapsed_time(b[1]) if a[1] is not None else None)


def peak_memory(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS (ru_maxrss)"


def model_for(args):
    config = GPT2Config(**PRESETS[args.model])
    if args.dropout is not None:
        config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = args.dropout
    return GPT2LMHeadModel(config).to(args.torch_device), config


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
    device, clock = args.torch_device, Clock(args.torch_device)
    names = ("step", "data", "forward", "backward", "optimizer")
    phases = {k: [] for k in names}
    events = {k: [] for k in names}
    losses = []
    for i in range(args.warmup_steps + args.steps):
        if i == args.warmup_steps and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        m0 = clock.mark()
        ids = torch.randint(0, V, (B, T + 1)).to(device)
        inp, target = ids[:, :T], ids[:, 1:]
        m1 = clock.mark()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            logits = model(inp).logits
        loss = F.cross_entropy(logits.float().view(-1, V), target.reshape(-1))
        m2 = clock.mark()
        loss.backward()
        m3 = clock.mark()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        m4 = clock.mark()
        losses.append(loss.item())
        if i >= args.warmup_steps:
            for k, (a, b) in zip(names, ((m0, m4), (m0, m1), (m1, m2), (m2, m3), (m3, m4))):
                host, event = Clock.between(a, b)
                phases[k].append(host)
                if event is not None:
                    events[k].append(event)
        print(f"step {i + 1}: {m4[0] - m0[0]:.0f} ms loss {losses[-1]:.3f}", file=sys.stderr)
    out = {k: stats(v) for k, v in phases.items()}
    out["tokensPerS"] = B * T / (out["step"]["meanMs"] / 1000)
    if events["step"]:
        out["cudaEvents"] = {k: stats(v) for k, v in events.items()}
    out["peakMemoryBytes"], out["peakMemorySource"] = peak_memory(device)
    out["loss"] = losses
    out["adamwImpl"] = args.adamw_impl
    return out


@torch.no_grad()
def infer(args):
    model, _ = model_for(args)
    model.eval()
    if args.dtype == "bf16":
        model.to(torch.bfloat16)
    device = args.torch_device
    prompt = torch.tensor([[int(x) for x in args.prompt_ids.split(",")]] * args.batch, device=device)

    def one_run():
        # .tolist() of the new tokens waits for the device, as baton's sampling does.
        tokens, tpot = [], []
        t0 = now_ms()
        out = model(prompt, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(nxt[0].item())
        ttft = now_ms() - t0
        past = out.past_key_values
        for _ in range(args.new_tokens - 1):
            t = now_ms()
            out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(nxt[0].item())
            tpot.append(now_ms() - t)
        return tokens, ttft, tpot, now_ms() - t0

    for _ in range(args.warmup_runs):
        one_run()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tokens, ttft, tpot, total = one_run()
    peak, peak_source = peak_memory(device)
    t0 = now_ms()
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                               min_new_tokens=args.new_tokens, do_sample=False, use_cache=True, pad_token_id=0)
    generated = generated[0, prompt.shape[1]:].tolist()
    generate_ms = now_ms() - t0
    return {
        "ttftMs": ttft,
        "tpot": stats(tpot),
        "tokensPerS": args.batch * args.new_tokens / (total / 1000),
        "totalMs": total,
        "generateTokensPerS": args.batch * args.new_tokens / (generate_ms / 1000),
        "peakMemoryBytes": peak,
        "peakMemorySource": peak_source,
        "tokenIds": tokens,
        "generateTokenIds": generated,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["train", "infer"])
    ap.add_argument("--model", default="gpt2", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=1, help="train: sequences per step; infer: copies of the prompt")
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
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    args.torch_device = torch.device(args.device)

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
        "dtype": args.dtype,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "cuda": torch.version.cuda if args.device == "cuda" else None,
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
