"""Every architecture rill loads, end to end, in files shaped like the real ones.

rill-mkmodel writes three small models (dim 256, 2 layers, 4 heads / 2 KV
heads, tied output) with the real tokenizers of llama.cpp's vocabulary files
in ../shared/data/vocab (relative to the repository root):

  llama3  Q4_K_M, llama-bpe vocabulary (128256 tokens), rope_freqs.weight
          (Llama 3.1's frequency divisors), rope base 500000
  qwen2   Q5_K_M, qwen2 vocabulary (151936 tokens), q/k/v biases, NEOX RoPE
  qwen3   Q6_K, qwen3 vocabulary, per-head q/k norms, head size 128 while
          dim / heads is 64
  phi3    Q4_K_M, phi-3 vocabulary (SentencePiece, 32064 tokens), fused
          attn_qkv and gate/up, no GQA

Each loads in rill-worker, says what it is in its log, and generates a
deterministic stream: the same seed twice gives the same tokens (another
seed other tokens), and the gateway's stream is the worker's standalone one.
The arithmetic itself is held to a reference in tests/unit/test_arch.c.
"""
import os

import pytest

import conftest
import rillclient as rc
from rillclient import JSON, SAMPLED, Client, run, sampling

VOCAB_DIR = os.path.join(conftest.ROOT, "..", "shared", "data", "vocab")
SHAPE = ["--dim", "256", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--ffn", "512", "--ctx", "1024",
         "--tied", "--seed", "5"]

# name: (vocabulary file, rill-mkmodel flags, what the worker's load line must say)
MODELS = {
    "llama3-q4_K_M": ("ggml-vocab-llama-bpe.gguf",
                      ["--arch", "llama", "--rope-base", "500000", "--rope-freqs", "--dtype", "q4_K_M"],
                      ["llama '", "heads 4/2 (kv) of 64", "vocab 128256", "rope norm with rope_freqs"]),
    "qwen2-q5_K_M": ("ggml-vocab-qwen2.gguf",
                     ["--arch", "qwen2", "--rope-base", "1000000", "--dtype", "q5_K_M"],
                     ["qwen2 '", "heads 4/2 (kv) of 64", "vocab 151936", "rope neox,"]),
    "qwen3-q6_K": ("ggml-vocab-qwen3.gguf",
                   ["--arch", "qwen3", "--head-dim", "128", "--rope-base", "1000000", "--dtype", "q6_K"],
                   ["qwen3 '", "heads 4/2 (kv) of 128", "vocab 151936", "rope neox,"]),
    "phi3-q4_K_M": ("ggml-vocab-phi-3.gguf",
                    ["--arch", "phi3", "--kv-heads", "4", "--dtype", "q4_K_M"],
                    ["phi3 '", "heads 4/4 (kv) of 64", "vocab 32064", "rope neox,"]),
}
NAMES = list(MODELS)
PROMPT = "The meaning of life is"
N = 24


def arch_model(name):
    vocab, flags, _ = MODELS[name]
    path = os.path.join(VOCAB_DIR, vocab)
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: these tests need llama.cpp's vocabulary files in ../shared/data/vocab")
    return conftest.make_model("arch-" + name, *SHAPE, "--vocab-from", path, *flags)


@pytest.fixture(scope="module", params=NAMES)
def arch(request, module_pipelines):
    """(name, model path, a pipeline serving it)."""
    model = arch_model(request.param)
    return request.param, model, module_pipelines(model)


def test_the_worker_loads_the_file_as_its_architecture(arch):
    name, _, p = arch
    log = p.log("w0")
    for want in MODELS[name][2]:
        assert want in log, f"{name}: the worker's log does not say {want!r}:\n{log[-3000:]}"


def test_the_same_seed_gives_the_same_stream(arch):
    name, model, _ = arch
    params = sampling(SAMPLED, seed=4242)
    flags = rc.cli_flags(params)
    a = [(t["position"], t["id"]) for t in conftest.worker_stream(model, PROMPT, N, *flags)]
    b = [(t["position"], t["id"]) for t in conftest.worker_stream(model, PROMPT, N, *flags)]
    assert len(a) == N, f"{name}: {len(a)} tokens, expected {N}"
    assert a == b, f"{name}: one seed gave two streams"
    other = [(t["position"], t["id"]) for t in
             conftest.worker_stream(model, PROMPT, N, *rc.cli_flags(sampling(SAMPLED, seed=4243)))]
    assert other != a, f"{name}: another seed gave the same {N} tokens"


def test_the_gateway_streams_what_the_worker_generates(arch):
    name, model, p = arch
    params = sampling(SAMPLED, seed=77)
    want = rc.expected(model, PROMPT, N, params)
    assert len(want) == N

    async def main():
        async with await Client.connect(p.url, JSON) as c:
            g = await c.run(PROMPT, N, params)
        rc.check_complete(g, want)
    run(main())
