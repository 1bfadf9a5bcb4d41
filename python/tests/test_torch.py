"""hdp.torch.sdpa against torch's SDPA and hdp.transformers against a transformers model.
Skipped where torch (or transformers) is not installed; CI does not install torch (its wheel
with CUDA libraries is several GB): run these with `pip install torch transformers`."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import hdp  # noqa: E402
import hdp.torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "assets/all-MiniLM-L6-v2"
NO_PRUNING = hdp.Config(no_block_pruning=True)
# As in test_hdp.py: 8-bit Q/K codes with 3 fractional bits on N(0, 1) inputs.
NO_PRUNING_MIN_COSINE = 0.995
# f32 attention in a different summation order than torch's eager path, through 6 layers.
EAGER_ABS = 1e-5
# The same model and HDP configuration through transformers (torch's projections) and through
# hdp's own BERT forward: identical decisions except where f32 rounding of the projections moves
# a value across a quantization step, which moves a near-tied key in or out of a row.
RUST_AGREEMENT = 0.999


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g) for _ in range(3))


def min_cos(a, b):
    return F.cosine_similarity(a.double(), b.double(), dim=-1).min().item()


def test_same_numbers_as_the_numpy_api_and_no_copy_out():
    q, k, v = rand(2, 3, 64, 32)
    out = hdp.torch.sdpa(q, k, v)
    ref, _ = hdp.attention(q.numpy(), k.numpy(), v.numpy())
    assert out.dtype == torch.float32 and out.shape == q.shape
    assert np.array_equal(out.numpy(), ref)
    assert hdp.torch.scaled_dot_product_attention is hdp.torch.sdpa


@pytest.mark.parametrize("causal", [False, True])
def test_no_pruning_close_to_torch_sdpa(causal):
    q, k, v = rand(2, 4, 96, 32, seed=1)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    got = hdp.torch.sdpa(q, k, v, is_causal=causal, config=NO_PRUNING)
    assert min_cos(got, want) > NO_PRUNING_MIN_COSINE


def test_masks_key_padding_bool_float_and_causal_forms():
    q, k, v = rand(2, 2, 48, 16, seed=2)
    keys = torch.ones(2, 48, dtype=torch.bool)
    keys[1, 30:] = False
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :])
    got = hdp.torch.sdpa(q, k, v, attn_mask=keys[:, None, None, :], config=NO_PRUNING)
    valid = got[1, :, :30]
    assert min_cos(valid, want[1, :, :30]) > NO_PRUNING_MIN_COSINE
    assert torch.all(got[1, :, 30:] == 0)  # padded query rows (documented)
    additive = torch.zeros(2, 1, 1, 48).masked_fill(~keys[:, None, None, :], torch.finfo(torch.float32).min)
    assert torch.equal(hdp.torch.sdpa(q, k, v, attn_mask=additive, config=NO_PRUNING), got)
    assert torch.equal(
        hdp.torch.sdpa(q, k, v, attn_mask=additive.expand(2, 2, 48, 48), config=NO_PRUNING), got
    )
    tril = torch.ones(48, 48, dtype=torch.bool).tril()
    assert torch.equal(
        hdp.torch.sdpa(q, k, v, attn_mask=tril), hdp.torch.sdpa(q, k, v, is_causal=True)
    )


def test_scale_three_d_and_gqa():
    q, k, v = rand(1, 4, 32, 16, seed=3)
    s = 0.3
    want = F.scaled_dot_product_attention(q, k, v, scale=s)
    got = hdp.torch.sdpa(q, k, v, scale=s, config=NO_PRUNING)
    assert min_cos(got, want) > NO_PRUNING_MIN_COSINE
    assert torch.equal(hdp.torch.sdpa(q[0], k[0], v[0]), hdp.torch.sdpa(q, k, v)[0])
    kv = k[:, :2], v[:, :2]
    want = F.scaled_dot_product_attention(q, *kv, enable_gqa=True)
    got = hdp.torch.sdpa(q, *kv, enable_gqa=True, config=NO_PRUNING)
    assert min_cos(got, want) > NO_PRUNING_MIN_COSINE
    with pytest.raises(ValueError, match="enable_gqa"):
        hdp.torch.sdpa(q, *kv)


def test_what_it_cannot_honour_raises():
    q, k, v = rand(1, 2, 16, 8, seed=4)
    cases = [
        (dict(dropout_p=0.1), ValueError, "dropout"),
        (dict(attn_mask=torch.randn(16, 16)), ValueError, "additive"),
        (dict(attn_mask=torch.rand(16, 16) > 0.5), ValueError, "key-padding"),
        (dict(attn_mask=torch.ones(16, 16, dtype=torch.bool), is_causal=True), ValueError, "not both"),
        (dict(attn_mask=torch.zeros(1, 1, 1, 16, dtype=torch.bool)), ValueError, "every key"),
    ]
    for kwargs, err, words in cases:
        with pytest.raises(err, match=words):
            hdp.torch.sdpa(q, k, v, **kwargs)
    with pytest.raises(TypeError, match="float32"):
        hdp.torch.sdpa(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="backward"):
        hdp.torch.sdpa(q.clone().requires_grad_(), k, v)
    with pytest.raises(ValueError, match="keys"):
        hdp.torch.sdpa(q, k[:, :, :8], v[:, :, :8])
    # A tensor off the CPU (the meta device stands in for CUDA on a machine without a GPU).
    with pytest.raises(ValueError, match="CPU"):
        hdp.torch.sdpa(q.to("meta"), k, v)
    with pytest.raises(ValueError, match="non-finite"):
        hdp.torch.sdpa(q.masked_fill(q > 1, float("nan")), k, v)
    with pytest.raises(ValueError, match=r"\[batch, heads, N, d\]"):
        hdp.torch.sdpa(q[0, 0], k[0, 0], v[0, 0])


def test_transformers_model_runs_through_hdp():
    transformers = pytest.importorskip("transformers")
    import hdp.transformers

    if not (MODEL / "model.safetensors").exists():
        pytest.skip("assets not fetched (python3 scripts/fetch_assets.py)")
    tok = transformers.AutoTokenizer.from_pretrained(str(MODEL))
    texts = [
        "A man is playing a guitar.",
        "Hybrid dynamic pruning decides which attention blocks to skip from integer scores "
        "alone, before any softmax, and keeps the output close to dense attention.",
    ]
    enc = tok(texts, padding=True, return_tensors="pt")

    def embed(model):
        with torch.no_grad():
            h = model(**enc).last_hidden_state
        m = enc["attention_mask"][..., None].float()
        return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    dense = embed(transformers.AutoModel.from_pretrained(str(MODEL), attn_implementation="eager").eval())
    # Pruning off and float scores and P.V: float attention, the eager model's embeddings
    # within f32 rounding (named tolerance EAGER_ABS).
    float_cfg = hdp.Config(no_block_pruning=True, score="float", pv="f32")
    hdp.transformers.register("hdp-test", config=float_cfg)
    model = transformers.AutoModel.from_pretrained(str(MODEL), attn_implementation="hdp-test").eval()
    assert (embed(model) - dense).abs().max().item() < EAGER_ABS
    # Pruning off with the default 8-bit scores and bf16 P.V.
    hdp.transformers.register("hdp-test", config=NO_PRUNING)
    assert (embed(model) * dense).sum(-1).min() > 0.999
    hdp.transformers.register("hdp-test")  # the default configuration
    with hdp.trace() as t:
        pruned = embed(model)
    layers = [layer["layer"] for layer in json.loads(t.to_json())["layers"]]
    assert layers == list(range(6))  # each module's layer_idx
    assert (pruned * dense).sum(-1).min() > 0.95  # default top-k 0.25 min 4: ~0.99 (README)
    assert 0.0 < t.summary()["block_sparsity"] < 1.0
    # The Rust embedder with the same configuration gives the same embeddings up to f32 noise
    # that can flip near-tied decisions.
    # RUST_AGREEMENT: measured 0.9996-0.9999 on such texts.
    rust = hdp.Embedder(str(MODEL)).encode(texts)
    assert (torch.from_numpy(rust) * pruned).sum(-1).min() > RUST_AGREEMENT
    assert hdp.simulate(t)["speedup_vs_dense"] > 1.0
