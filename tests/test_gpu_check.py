"""benchmarks/gpu_check.py on a machine without a GPU: it stops before the GPU step, saying why and what to run."""

import os
import subprocess
import sys

import pytest
import torch


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs the real check (minutes)")
def test_gpu_check_without_a_gpu_exits_with_a_clear_message():
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "gpu_check.py")], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr and "--shape tiny --allow_cpu" in result.stderr
    assert "gpu_check:" not in result.stdout  # nothing was built or launched


def test_tiny_tokenizer_can_take_llama_2_layout():
    from trl_vla.testing import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer(base_vocab_size=1024)
    assert len(tokenizer) == 1025 and tokenizer.pad_token_id == 1024
    assert (
        tokenizer.convert_tokens_to_ids("<ACTION_0>") == 768
        and tokenizer.convert_tokens_to_ids("<ACTION_255>") == 1023
    )
    with pytest.raises(ValueError, match="base_vocab_size"):
        make_tiny_tokenizer(base_vocab_size=300)
