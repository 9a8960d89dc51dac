"""Decision and action throughput of the tiny OpenVLA policy on CPU, for both decoding modes.

    python benchmarks/policy_throughput.py
    python benchmarks/policy_throughput.py --batch-sizes 1 8 32 --threads 2 --repeats 5

For each mode and batch size, times `VLAPolicy.sample_actions` (temperature 1; processor time excluded, reported
separately) and `action_logits` (the teacher-forced scoring a trainer runs, without gradients). A decision is one
`sample_actions` row; it yields `chunk_size` actions (autoregressive OpenVLA: 7 tokens, 1 action; parallel OFT: 56
tokens, 8 actions, in one forward pass).
"""

import argparse
import tempfile
import time

import numpy as np
import torch

from trl_vla.models import OpenVLAForActionPrediction, OpenVLAProcessor, VLAPolicy
from trl_vla.testing import make_tiny_openvla


MODES = {"autoregressive": 1, "parallel": 8}  # decoding -> chunk size (OpenVLA / OpenVLA-OFT on LIBERO)


def timed(repeats: int, fn, *args, **kwargs) -> float:
    """Median seconds of `fn(*args, **kwargs)` over `repeats` calls, after one warm-up call."""
    fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode, chunk_size in MODES.items():
            path = make_tiny_openvla(f"{tmp}/{mode}", decoding=mode, chunk_size=chunk_size)
            model = OpenVLAForActionPrediction.from_pretrained(path).eval()
            policy = VLAPolicy(model, OpenVLAProcessor.from_pretrained(path))
            tokens = model.action_space.num_action_tokens
            for batch in args.batch_sizes:
                observations = [{"image": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)} for _ in range(batch)]
                instructions = ["put the black bowl on the plate"] * batch
                build = timed(args.repeats, policy.build_inputs, observations, instructions)
                inputs = policy.build_inputs(observations, instructions)
                sample = timed(args.repeats, policy.sample_actions, inputs, temperature=1.0)
                ids = policy.sample_actions(inputs)[0]
                with torch.no_grad():
                    score = timed(args.repeats, policy.action_logits, inputs, ids)
                rows.append(
                    (
                        mode,
                        chunk_size,
                        tokens,
                        batch,
                        build,
                        sample,
                        batch / sample,
                        batch * chunk_size / sample,
                        score,
                    )
                )
                print(f"{mode} batch {batch}: {batch / sample:.1f} decisions/s", flush=True)

    print()
    print(f"tiny OpenVLA on CPU, {args.threads} thread(s), median of {args.repeats}")
    header = (
        f"{'decoding':<15}{'chunk':>6}{'tokens':>7}{'batch':>6}{'build ms':>10}{'sample ms':>11}"
        f"{'decisions/s':>13}{'actions/s':>11}{'score ms':>10}"
    )
    print(header)
    print("-" * len(header))
    for mode, chunk, tokens, batch, build, sample, decisions, actions, score in rows:
        print(
            f"{mode:<15}{chunk:>6}{tokens:>7}{batch:>6}{build * 1e3:>10.1f}{sample * 1e3:>11.1f}"
            f"{decisions:>13.1f}{actions:>11.1f}{score * 1e3:>10.1f}"
        )


if __name__ == "__main__":
    main()
