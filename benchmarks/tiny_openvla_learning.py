"""Can the tiny OpenVLA learn what a LIBERO policy needs: where things are in the image, and what the instruction says?

    python benchmarks/tiny_openvla_learning.py
    python benchmarks/tiny_openvla_learning.py --modes parallel --steps 300 --init-std 0.02

A toy supervised probe on CPU: 64 images with one white 16 px square on black at a random place; the 7-D target is
`[x > centre ? 1 : -1, y (continuous), +-0.5 from the instruction ("open"/"close" the drawer), 0, 0, 0, +-1 from
the instruction]`, tokenised with the model's action tokenizer and trained with the action-token cross-entropy
(`model(**inputs, labels=...)`), AdamW at 1e-3, batch 16. Prints the mean absolute error of the greedy actions per
dimension (chance is about 1.0 for the binary dims and 0.67 for y). `--init-std` overrides the initialisation of
the language model's matrices (the tiny checkpoints use 1/sqrt(width); Llama's default is 0.02).
"""

import argparse
import tempfile
import time

import numpy as np
import torch

from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor
from trl_vla.testing import make_tiny_openvla


def toy_data(processor, tokenizer, n: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    images, instructions, actions = [], [], []
    for i in range(n):
        image = np.zeros((128, 128, 3), np.uint8)
        x, y = rng.integers(0, 112, 2)
        image[y : y + 16, x : x + 16] = 255
        sign = 1.0 if i % 2 else -1.0
        actions.append([1.0 if x > 56 else -1.0, y / 112 * 2 - 1, 0.5 * sign, 0, 0, 0, sign])
        images.append(image)
        instructions.append("open the drawer" if sign > 0 else "close the drawer")
    inputs = processor(images=images, text=instructions, return_tensors="pt")
    return inputs, torch.as_tensor(tokenizer.encode(np.array(actions, np.float32)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=["autoregressive", "parallel"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--init-std", type=float, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            torch.manual_seed(0)
            path = make_tiny_openvla(f"{tmp}/{mode}", decoding=mode)
            model = OpenVLAForActionPrediction.from_pretrained(path).train()
            if args.init_std is not None:
                with torch.no_grad():
                    for parameter in model.language_model.parameters():
                        if parameter.dim() == 2:
                            parameter.normal_(0.0, args.init_std)
            tokenizer = model.config.action_tokenizer()
            inputs, targets = toy_data(OpenVLAProcessor.from_pretrained(path), tokenizer)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
            start = time.perf_counter()
            for step in range(args.steps):
                index = torch.randint(0, targets.shape[0], (16,))
                loss = model(**{k: v[index] for k, v in inputs.items()}, labels=targets[index]).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if (step + 1) % 100 == 0 or step + 1 == args.steps:
                    model.eval()
                    with torch.no_grad():
                        columns = model(**inputs, action_token_ids=targets).action_logits.argmax(-1)
                    model.train()
                    predicted = tokenizer.decode(tokenizer.columns_to_token_ids(columns).numpy())
                    error = np.abs(predicted - tokenizer.decode(targets.numpy())).mean(0)
                    rows.append((mode, step + 1, loss.item(), error, time.perf_counter() - start))
                    print(f"{mode} step {step + 1}: loss {loss.item():.3f}", flush=True)

    print()
    print(f"toy probe, 64 images, LM init std {args.init_std or '1/sqrt(width)'}: mean |error| of greedy actions")
    header = f"{'decoding':<15}{'step':>6}{'loss':>8}{'x>c':>7}{'y':>7}{'instr':>7}{'zeros':>7}{'grip':>7}{'sec':>6}"
    print(header)
    print("-" * len(header))
    for mode, step, loss, error, seconds in rows:
        print(
            f"{mode:<15}{step:>6}{loss:>8.3f}{error[0]:>7.3f}{error[1]:>7.3f}{error[2]:>7.3f}"
            f"{error[3:6].mean():>7.3f}{error[6]:>7.3f}{seconds:>6.0f}"
        )


if __name__ == "__main__":
    main()
