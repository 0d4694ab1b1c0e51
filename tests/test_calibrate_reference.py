"""The calibrator against an independent plain computation.

Everything "reference" here is written from the definitions, not from tappa_local.calibrate:
a float64 decoder forward pass read straight from the checkpoint's state dict (RMSNorm,
projections, explicit RoPE, causal GQA attention, SwiGLU), and metrics as explicit loops over
samples, heads, windows and T x T cosine matrices. The calibrator runs the real transformers
model (float32) through its hooks; both must agree to 1e-5.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tappa_local.calibrate import CalibrationConfig
from tappa_local.calibrate.core import run_calibration
from tappa_local.calibrate.data import iter_texts
from tappa_local.calibrate.loading import load
from tappa_local.calibrate.metrics import allpairs_qsim, block_influence, windowed_qsim
from tappa_local.calibrate.prune import tappa_prune_plan
from tappa_local.calibrate.querystats import MomentAccumulator, tie_rope_pairs
from tappa_local.localmodels import TinyModel, TinyModelSpec, ensure_tiny_model, stdlib_corpus

TOL = 1e-5


# --------------------------------------------------------------------------- plain reference metrics


def ref_cos_matrix(x: torch.Tensor) -> torch.Tensor:
    """[T, D] -> [T, T] cosines, each computed as x_i.x_j / (max|x_i|,1e-8)(max|x_j|,1e-8)."""
    T = x.shape[0]
    out = torch.empty(T, T, dtype=torch.float64)
    norms = [max(float(x[i].norm()), 1e-8) for i in range(T)]
    for i in range(T):
        for j in range(T):
            out[i, j] = float(x[i] @ x[j]) / (norms[i] * norms[j])
    return out


def ref_offdiag_mean(x: torch.Tensor) -> float:
    T = x.shape[0]
    c = ref_cos_matrix(x.double())
    return float((c.sum() - c.diagonal().sum()) / (T * (T - 1)))


def ref_windowed(q: torch.Tensor, W: int, offset: int) -> np.ndarray:
    """q: [S, H, T, D] -> per-head mean over all windows of all samples."""
    S, H, T, _ = q.shape
    out = np.zeros(H)
    for h in range(H):
        scores = []
        for s in range(S):
            start = offset
            while start + W <= T:
                scores.append(ref_offdiag_mean(q[s, h, start : start + W]))
                start += W
        out[h] = sum(scores) / len(scores)
    return out


def ref_allpairs(q: torch.Tensor) -> np.ndarray:
    """q: [S, H, T, D] -> per-head mean over samples of the whole-sequence score."""
    S, H = q.shape[:2]
    return np.array([sum(ref_offdiag_mean(q[s, h]) for s in range(S)) / S for h in range(H)])


def ref_bi(h_in: torch.Tensor, h_out: torch.Tensor) -> float:
    """Mean over every token of 1 - cos(h_in, h_out)."""
    vals = []
    for s in range(h_in.shape[0]):
        for t in range(h_in.shape[1]):
            a, b = h_in[s, t].double(), h_out[s, t].double()
            vals.append(1.0 - float(a @ b) / (max(float(a.norm()), 1e-8) * max(float(b.norm()), 1e-8)))
    return sum(vals) / len(vals)


def ref_qstats(q: torch.Tensor, n_sink: int) -> tuple[np.ndarray, np.ndarray]:
    """q: [S, H, T, D] pre-RoPE -> mean, population variance tied over (i, i + D/2)."""
    S, H, T, D = q.shape
    x = q[:, :, n_sink:, :].double().permute(1, 3, 0, 2).reshape(H, D, -1)  # [H, D, N]
    mean = x.mean(-1)
    var = ((x - mean[..., None]) ** 2).mean(-1)
    tied = var.clone()
    for i in range(D // 2):
        tied[:, i] = tied[:, i + D // 2] = (var[:, i] + var[:, i + D // 2]) / 2
    return mean.numpy(), tied.numpy()


def ref_prune_order(bi: list[float], q: list[float], beta: float) -> tuple[list[float], list[int]]:
    def norm(v: list[float]) -> list[float]:
        lo, hi = min(v), max(v)
        return [0.0] * len(v) if hi == lo else [(x - lo) / (hi - lo) for x in v]

    score = [b + beta * (1 - qq) for b, qq in zip(norm(bi), norm(q))]
    return score, sorted(range(len(score)), key=lambda i: (score[i], i))


# --------------------------------------------------------------------------- plain reference decoder


@dataclass
class RefLayer:
    h_in: torch.Tensor  # [S, T, C]
    h_out: torch.Tensor  # [S, T, C]
    q_proj: torch.Tensor  # [S, H, T, D] q_proj output
    q_in: torch.Tensor  # [S, H, T, D] query entering RoPE (after q_norm if any)
    q_rope: torch.Tensor  # [S, H, T, D] post-RoPE


def ref_forward(hf_dir: Path, ids: torch.Tensor) -> list[RefLayer]:
    from safetensors.torch import load_file
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(hf_dir)
    sd = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        sd.update({k: v.double() for k, v in load_file(str(f)).items()})
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    theta = float((getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    eps = cfg.rms_norm_eps

    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w

    def lin(x: torch.Tensor, name: str) -> torch.Tensor:
        y = x @ sd[name + ".weight"].T
        return y + sd[name + ".bias"] if name + ".bias" in sd else y

    S, T = ids.shape
    pos = torch.arange(T, dtype=torch.float64)
    inv = torch.tensor([1.0 / theta ** (2 * i / D) for i in range(D // 2)], dtype=torch.float64)
    ang = pos[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)
    sin = torch.cat([ang.sin(), ang.sin()], -1)

    def rope(x: torch.Tensor) -> torch.Tensor:  # [S, H, T, D]
        rot = torch.cat([-x[..., D // 2 :], x[..., : D // 2]], -1)
        return x * cos + rot * sin

    x = sd["model.embed_tokens.weight"][ids]
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    out: list[RefLayer] = []
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        h = rms(x, sd[p + "input_layernorm.weight"])
        q_proj = lin(h, p + "self_attn.q_proj").view(S, T, H, D).transpose(1, 2)
        k = lin(h, p + "self_attn.k_proj").view(S, T, Hkv, D).transpose(1, 2)
        v = lin(h, p + "self_attn.v_proj").view(S, T, Hkv, D).transpose(1, 2)
        q_in = q_proj
        if p + "self_attn.q_norm.weight" in sd:
            q_in = rms(q_proj, sd[p + "self_attn.q_norm.weight"])
            k = rms(k, sd[p + "self_attn.k_norm.weight"])
        q_rope, k_rope = rope(q_in), rope(k)
        k_rope = k_rope.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
        att = torch.softmax(q_rope @ k_rope.transpose(-1, -2) / math.sqrt(D) + mask, dim=-1)
        a = (att @ v).transpose(1, 2).reshape(S, T, H * D)
        x1 = x + lin(a, p + "self_attn.o_proj")
        m = rms(x1, sd[p + "post_attention_layernorm.weight"])
        gate = lin(m, p + "mlp.gate_proj")
        x2 = x1 + lin(torch.nn.functional.silu(gate) * lin(m, p + "mlp.up_proj"), p + "mlp.down_proj")
        out.append(RefLayer(x, x2, q_proj, q_in, q_rope))
        x = x2
    return out


# --------------------------------------------------------------------------- random tensors


@pytest.mark.parametrize("shape,W,offset", [((2, 3, 70, 16), 8, 0), ((1, 2, 64, 8), 32, 4), ((3, 1, 40, 6), 5, 3)])
def test_metrics_match_loops_on_random_tensors(shape: tuple[int, ...], W: int, offset: int) -> None:
    g = torch.Generator().manual_seed(sum(shape) + W)
    q = torch.randn(*shape, generator=g) + 0.3 * torch.randn(shape[-1], generator=g)  # a shared direction
    q[0, 0, offset + 1] = 0.0  # an all-zero query: cosine 0 with everything
    S, H, T, D = shape
    got_w = windowed_qsim(q, W, offset)
    assert got_w.shape == (S, H, (T - offset) // W)
    np.testing.assert_allclose(got_w.mean(dim=(0, 2)).numpy(), ref_windowed(q, W, offset), atol=TOL, rtol=0)
    np.testing.assert_allclose(allpairs_qsim(q).mean(0).numpy(), ref_allpairs(q), atol=TOL, rtol=0)

    h_in, h_out = torch.randn(S, T, 24, generator=g), torch.randn(S, T, 24, generator=g)
    h_out = h_out + 2 * h_in
    assert abs(float(block_influence(h_in, h_out).mean()) - ref_bi(h_in, h_out)) < TOL


def test_query_moments_stream_and_tie_on_random_tensors() -> None:
    g = torch.Generator().manual_seed(7)
    S, H, T, D, sink = 5, 3, 33, 8, 4
    q = torch.randn(S, H, T, D, generator=g) * torch.linspace(0.5, 3.0, D) + torch.linspace(-2, 2, D)
    acc = MomentAccumulator.empty(H, D)
    for chunk in (q[:1], q[1:3], q[3:]):  # uneven batches
        acc.update(chunk[:, :, sink:].transpose(1, 2).reshape(-1, H, D))
    mean, var = ref_qstats(q, sink)
    np.testing.assert_allclose(acc.mean.numpy(), mean, atol=TOL, rtol=0)
    np.testing.assert_allclose(tie_rope_pairs(acc.variance(), D).numpy(), var, atol=TOL, rtol=0)
    tied = tie_rope_pairs(acc.variance(), D)
    assert torch.equal(tied[:, : D // 2], tied[:, D // 2 :])
    # partial rotary: only the first R dims are paired
    part = tie_rope_pairs(acc.variance(), 4)
    assert torch.equal(part[:, 4:], acc.variance()[:, 4:]) and torch.equal(part[:, :2], part[:, 2:4])


@pytest.mark.parametrize("seed", range(5))
def test_prune_order_matches_reference_formula(seed: int) -> None:
    rng = np.random.default_rng(seed)
    L = 12
    bi = rng.random(L).round(2).tolist()  # rounding creates ties
    q = rng.random(L).round(1).tolist()
    beta = [0.0, 0.1, 0.2, 0.3, 1.0][seed]
    plan = tappa_prune_plan(bi, q, beta)
    score, order = ref_prune_order(bi, q, beta)
    np.testing.assert_allclose(plan.score, score, atol=1e-12, rtol=0)
    assert plan.order.tolist() == order
    const = tappa_prune_plan([0.5] * 4, [0.1, 0.2, 0.3, 0.4], 0.0)  # constant BI -> all zero, index order
    assert const.order.tolist() == [0, 1, 2, 3]


# --------------------------------------------------------------------------- tiny models


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.is_file() and (f.name.startswith("tokenizer") or f.name.startswith("special_tokens")):
            shutil.copy2(f, dst / f.name)


@pytest.fixture(scope="module")
def tiny_mha(native_lib: object) -> TinyModel:
    return ensure_tiny_model(TinyModelSpec(arch="llama", num_heads=4, num_kv_heads=4))


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory, tiny_llama: TinyModel) -> Path:
    """A random-init Qwen3 (q_norm/k_norm, explicit head_dim != hidden/heads), built here."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = tmp_path_factory.mktemp("qwen3")
    torch.manual_seed(3)
    cfg = Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=24, max_position_embeddings=1024, rms_norm_eps=1e-6,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    model = Qwen3ForCausalLM(cfg)
    with torch.no_grad():  # non-trivial q_norm weights so skipping the norm would be caught
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
    model.save_pretrained(out)
    _copy_tokenizer(tiny_llama.hf_dir, out)
    return out


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory: pytest.TempPathFactory, tiny_llama: TinyModel) -> Path:
    """A random-init Mistral (GQA 4/1, rope_theta 1e6), built here."""
    from transformers import MistralConfig, MistralForCausalLM

    out = tmp_path_factory.mktemp("mistral")
    torch.manual_seed(5)
    cfg = MistralConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=1, max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=1e6,
                        sliding_window=None, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    MistralForCausalLM(cfg).save_pretrained(out)
    _copy_tokenizer(tiny_llama.hf_dir, out)
    return out


CFG = CalibrationConfig(n_samples=2, seq_len=80, window=16, n_sink=4, beta=0.25, batch_size=2)


def _check_against_reference(hf_dir: Path, config: CalibrationConfig = CFG) -> None:
    loaded = load(hf_dir, config)
    run = run_calibration(loaded, iter_texts(stdlib_corpus(60_000)), config, progress=False)
    prof = run.profile
    ref = ref_forward(hf_dir, run.samples.ids)
    G = prof.n_head // prof.n_head_kv
    bi, qp = [], []
    for layer, r in enumerate(ref):
        win = ref_windowed(r.q_rope, config.window, config.n_sink)
        np.testing.assert_allclose(prof.qsim_head[layer], win, atol=TOL, rtol=0, err_msg=f"windowed q-sim, layer {layer}")
        assert abs(prof.qsim_layer[layer] - win.mean()) < TOL
        kv = [win[g * G : (g + 1) * G].mean() for g in range(prof.n_head_kv)]
        np.testing.assert_allclose(prof.qsim_kv_head[layer], kv, atol=TOL, rtol=0)
        allp = ref_allpairs(r.q_proj)
        np.testing.assert_allclose(prof.qsim_prune_head[layer], allp, atol=TOL, rtol=0, err_msg=f"prune q-sim, layer {layer}")
        assert abs(prof.qsim_prune_layer[layer] - allp.mean()) < TOL
        b = ref_bi(r.h_in, r.h_out)
        assert abs(prof.bi_layer[layer] - b) < TOL, (layer, prof.bi_layer[layer], b)
        mean, var = ref_qstats(r.q_in, config.n_sink)
        np.testing.assert_allclose(prof.qstats_mean[layer], mean, atol=TOL, rtol=0)
        np.testing.assert_allclose(prof.qstats_var[layer], var, atol=TOL, rtol=0)
        bi.append(b)
        qp.append(float(allp.mean()))
    score, order = ref_prune_order(bi, qp, config.beta)
    np.testing.assert_allclose(prof.prune_score, score, atol=TOL, rtol=0)
    assert prof.prune_order.tolist() == order
    assert prof.n_head == ref[0].q_proj.shape[1] and prof.head_dim == ref[0].q_proj.shape[3]


def test_llama_gqa_matches_reference(tiny_llama: TinyModel) -> None:
    _check_against_reference(tiny_llama.hf_dir)


def test_qwen2_with_qkv_bias_matches_reference(tiny_qwen2: TinyModel) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(next(tiny_qwen2.hf_dir.glob("*.safetensors"))))
    assert "model.layers.0.self_attn.q_proj.bias" in weights
    _check_against_reference(tiny_qwen2.hf_dir)


def test_mha_matches_reference(tiny_mha: TinyModel) -> None:
    _check_against_reference(tiny_mha.hf_dir, CalibrationConfig(n_samples=3, seq_len=64, window=8, n_sink=0, beta=0.1, batch_size=2))


def test_qwen3_q_norm_matches_reference(tiny_qwen3: Path) -> None:
    _check_against_reference(tiny_qwen3)


def test_mistral_matches_reference(tiny_mistral: Path) -> None:
    _check_against_reference(tiny_mistral)
