#!/usr/bin/env python3
"""Makes a small random GPT-2 with Hugging Face transformers, and the reference outputs
baton's parity test compares against.

usage: make_checkpoint.py OUT_DIR

Writes OUT_DIR/config.json and OUT_DIR/model.safetensors (save_pretrained), and
OUT_DIR/reference.json: input ids, logits (fp32, eval mode), the loss with labels = ids,
and a greedy continuation from generate(); and OUT_DIR/gradients.safetensors: every
parameter's gradient of that loss (eval mode: no dropout), under its parameter's name.
"""
import json
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main(out: str) -> None:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=1000,
        n_positions=64,
        n_embd=64,
        n_layer=3,
        n_head=4,
        # Larger than GPT-2's 0.02 so logits are far from uniform and greedy picks are clear.
        initializer_range=0.2,
    )
    model = GPT2LMHeadModel(config).eval()
    # GPT-2's init leaves biases at 0 and LayerNorms at identity: perturb them so every
    # tensor's loading is checked.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("transformer.ln_f"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out, safe_serialization=True)

    ids = torch.randint(0, config.vocab_size, (2, 16))
    with torch.no_grad():
        result = model(ids, labels=ids)
        prompt = ids[:1, :8]
        greedy = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=0,
        )
    # The tied wte gets its gradient from both the lookup and the lm_head.
    model.zero_grad(set_to_none=True)
    model(ids, labels=ids).loss.backward()
    gradients = {name: p.grad.contiguous() for name, p in model.named_parameters()}
    from safetensors.torch import save_file

    save_file(gradients, f"{out}/gradients.safetensors")

    reference = {
        "input_ids": ids.tolist(),
        "logits_shape": list(result.logits.shape),
        "logits": result.logits.flatten().tolist(),
        "loss": result.loss.item(),
        "prompt": prompt[0].tolist(),
        "greedy": greedy[0, prompt.shape[1]:].tolist(),
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
    }
    with open(f"{out}/reference.json", "w") as f:
        json.dump(reference, f)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
