"""The calibrator end to end: corpus formats, sampling, refusals, streaming, offload, profile
round trip, provenance, budget plan and the ``tappa-local calibrate`` command."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tappa_local import cli
from tappa_local.budget import BudgetSpec, allocate, tappa_weights
from tappa_local.calibrate import (
    CalibrationConfig,
    CalibrationConfigError,
    CorpusError,
    ModelSourceError,
    UnsupportedModelError,
    calibrate,
    calibrate_texts,
)
from tappa_local.calibrate.accumulators import CalibrationAccumulators
from tappa_local.calibrate.architecture import inspect_model
from tappa_local.calibrate.core import run_calibration
from tappa_local.calibrate.data import build_samples, iter_documents, iter_texts
from tappa_local.calibrate.hooks import CalibrationHooks
from tappa_local.calibrate.loading import load, resolve_source
from tappa_local.localmodels import TinyModel, stdlib_corpus
from tappa_local.profile import Profile

SMALL = CalibrationConfig(n_samples=3, seq_len=64, window=16, n_sink=4)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    for i, text in enumerate(stdlib_corpus(40_000, skip=3)):
        (d / f"doc{i:02d}.txt").write_text(text)
    return d


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for f in src.iterdir():
        if f.is_file() and (f.name.startswith("tokenizer") or f.name.startswith("special_tokens")):
            shutil.copy2(f, dst / f.name)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory, tiny_llama: TinyModel) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=128, n_embd=32, n_layer=2, n_head=2)).save_pretrained(d)
    _copy_tokenizer(tiny_llama.hf_dir, d)
    return d


@pytest.fixture(scope="module")
def tiny_opt(tmp_path_factory: pytest.TempPathFactory, tiny_llama: TinyModel) -> Path:
    from transformers import OPTConfig, OPTForCausalLM

    d = tmp_path_factory.mktemp("opt")
    cfg = OPTConfig(vocab_size=512, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2,
                    max_position_embeddings=128, word_embed_proj_dim=32)
    OPTForCausalLM(cfg).save_pretrained(d)
    _copy_tokenizer(tiny_llama.hf_dir, d)
    return d


@pytest.fixture(scope="module")
def llama_profile(tiny_llama: TinyModel, corpus_dir: Path) -> Profile:
    return calibrate(tiny_llama.hf_dir, [corpus_dir], SMALL, progress=False)


# --------------------------------------------------------------------------- corpus and samples


def test_corpus_formats(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    (tmp_path / "a.txt").write_text("alpha")
    sub = tmp_path / "folder" / "nested"
    sub.mkdir(parents=True)
    (sub / "b.txt").write_text("bravo")
    (tmp_path / "folder" / "a.jsonl").write_text('{"text": "charlie"}\n\n{"text": "delta", "x": 1}\n')
    (tmp_path / "folder" / "ignored.md").write_text("not read")
    (tmp_path / "c.jsonl").write_text('{"body": "echo"}\n')
    Dataset.from_dict({"text": ["foxtrot", "golf"]}).save_to_disk(str(tmp_path / "ds"))
    DatasetDict({"validation": Dataset.from_dict({"text": ["hotel"]}), "train": Dataset.from_dict({"text": ["india"]})}).save_to_disk(
        str(tmp_path / "dsd")
    )
    texts = lambda *a, **k: [d.text for d in iter_documents(*a, **k)]  # noqa: E731
    assert texts([tmp_path / "a.txt"]) == ["alpha"]
    assert texts([tmp_path / "folder"]) == ["charlie", "delta", "bravo"]  # sorted paths: a.jsonl < nested/b.txt
    assert texts([tmp_path / "c.jsonl"], text_field="body") == ["echo"]
    assert texts([tmp_path / "ds"]) == ["foxtrot", "golf"]
    assert texts([tmp_path / "dsd"]) == ["india"]
    assert texts([tmp_path / "dsd"], dataset_split="validation") == ["hotel"]
    assert texts([str(tmp_path / "a.txt"), tmp_path / "ds"]) == ["alpha", "foxtrot", "golf"]

    with pytest.raises(CorpusError, match="not found"):
        list(iter_documents([tmp_path / "missing.txt"]))
    with pytest.raises(CorpusError, match="no 'text' field"):
        list(iter_documents([tmp_path / "c.jsonl"]))
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    with pytest.raises(CorpusError, match="bad.jsonl:1: not valid JSON"):
        list(iter_documents([tmp_path / "bad.jsonl"]))
    with pytest.raises(CorpusError, match="unsupported corpus file type"):
        list(iter_documents([tmp_path / "folder" / "ignored.md"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no .txt or .jsonl"):
        list(iter_documents([tmp_path / "empty"]))
    with pytest.raises(CorpusError, match="no column 'body'"):
        list(iter_documents([tmp_path / "ds"], text_field="body"))


def test_sample_layout(tiny_llama: TinyModel) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama.hf_dir)
    docs = ["def f(x):\n    return x\n", "   ", "class A:\n    pass\n" * 5]
    s = build_samples(tok, iter_texts(docs), n_samples=10, seq_len=9)
    stream = tok(docs[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id] + tok(docs[2], add_special_tokens=False)["input_ids"]
    n = len(stream) // 8
    assert s.n_samples == n > 1 and s.seq_len == 9
    expected = torch.tensor([[tok.bos_token_id] + stream[i * 8 : (i + 1) * 8] for i in range(n)])
    assert torch.equal(s.ids, expected)
    assert s.sha256 == hashlib.sha256(np.asarray(expected.numpy(), dtype="<i4").tobytes()).hexdigest()
    no_bos = build_samples(tok, iter_texts(docs), n_samples=2, seq_len=9, add_bos=False)
    assert torch.equal(no_bos.ids, torch.tensor([stream[:9], stream[9:18]]))
    with pytest.raises(CorpusError, match="empty"):
        build_samples(tok, iter_texts(["", " \n"]), 1, 8)
    with pytest.raises(CorpusError, match="fewer than one sample"):
        build_samples(tok, iter_texts(["x = 1"]), 1, 512)


def test_config_validation() -> None:
    for bad in (dict(n_samples=0), dict(window=1), dict(seq_len=20, window=32), dict(seq_len=40, n_sink=10, window=32),
                dict(batch_size=0), dict(dtype="float8"), dict(device="tpu"), dict(budget_allocation="magic"), dict(beta=-1.0)):
        with pytest.raises(CalibrationConfigError):
            CalibrationConfig(**bad)


def test_model_source_resolution(tmp_path: Path) -> None:
    assert resolve_source("Qwen/Qwen2.5-0.5B") == ("Qwen/Qwen2.5-0.5B", None)
    with pytest.raises(ModelSourceError, match="not found"):
        resolve_source(str(tmp_path / "nope"))
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_source(tmp_path)


# --------------------------------------------------------------------------- refusals


def test_gpt2_is_refused(tiny_gpt2: Path, corpus_dir: Path) -> None:
    with pytest.raises(UnsupportedModelError, match=r"^unsupported: GPT2LMHeadModel attention .*no q_proj.*c_attn"):
        calibrate(tiny_gpt2, [corpus_dir], SMALL, progress=False)


def test_model_without_rope_is_refused(tiny_opt: Path, corpus_dir: Path) -> None:
    with pytest.raises(UnsupportedModelError, match=r"^unsupported: OPTForCausalLM has no rotary position embedding"):
        calibrate(tiny_opt, [corpus_dir], SMALL, progress=False)


# --------------------------------------------------------------------------- streaming


def test_batch_size_does_not_change_results(tiny_qwen2: TinyModel, corpus_dir: Path) -> None:
    a = calibrate(tiny_qwen2.hf_dir, [corpus_dir], CalibrationConfig(n_samples=3, seq_len=64, window=16, batch_size=1), progress=False)
    b = calibrate(tiny_qwen2.hf_dir, [corpus_dir], CalibrationConfig(n_samples=3, seq_len=64, window=16, batch_size=3), progress=False)
    assert a.provenance.corpus_sha256 == b.provenance.corpus_sha256
    for name in ("qsim_layer", "qsim_head", "qsim_kv_head", "qsim_prune_layer", "qsim_prune_head", "bi_layer", "qstats_mean", "qstats_var"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-6, rtol=0, err_msg=name)
    assert a.prune_order.tolist() == b.prune_order.tolist()


def test_accumulators_are_bounded_and_hooks_keep_nothing(tiny_llama: TinyModel) -> None:
    loaded = load(tiny_llama.hf_dir, SMALL)
    geo = inspect_model(loaded.model)
    L, H, Hkv, D = geo.n_layer, geo.n_head, geo.n_head_kv, geo.head_dim
    sizes = []
    texts = stdlib_corpus(60_000)
    for n, T in ((1, 64), (4, 64), (2, 128)):
        run = run_calibration(loaded, iter_texts(texts), CalibrationConfig(n_samples=n, seq_len=T, window=16), progress=False)
        assert run.samples.n_tokens == n * T
        sizes.append(run.accumulators.nbytes())
    # float64 [L,H] x2 + [L] + 2 x [L,H,D] moments, int64 counters [L] x3: nothing grows with samples or length
    assert sizes == [8 * (2 * L * H + L + 2 * L * H * D + 3 * L)] * 3
    acc = CalibrationAccumulators(L, H, Hkv, D)
    with CalibrationHooks(geo, acc, window=16, n_sink=4) as hooks, torch.inference_mode():
        loaded.model(input_ids=torch.randint(3, 500, (2, 64)), use_cache=False)
        assert hooks.live_tensors() == 0  # each layer drops its scratch once it has been measured
        assert int(acc.prune_count[0]) == 2 and int(acc.win_count[0]) == 2 * 3
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in loaded.model.modules())  # all removed


def test_offloaded_layers_give_the_same_profile(tiny_llama: TinyModel, corpus_dir: Path, tmp_path: Path, llama_profile: Profile) -> None:
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "cpu",
                  "model.layers.3": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    cfg = CalibrationConfig(n_samples=3, seq_len=64, window=16, n_sink=4, device_map=device_map, offload_folder=str(tmp_path))
    loaded = load(tiny_llama.hf_dir, cfg)
    assert loaded.model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"  # really offloaded
    off = calibrate(tiny_llama.hf_dir, [corpus_dir], cfg, progress=False)
    for name in ("qsim_head", "qsim_prune_head", "bi_layer", "qstats_mean", "qstats_var"):
        np.testing.assert_allclose(getattr(off, name), getattr(llama_profile, name), atol=1e-6, rtol=0, err_msg=name)
    assert off.prune_order.tolist() == llama_profile.prune_order.tolist()
    assert off.provenance.weights_sha256 == llama_profile.provenance.weights_sha256


# --------------------------------------------------------------------------- profile, provenance, budget


def test_profile_round_trip_is_exact(llama_profile: Profile, tmp_path: Path) -> None:
    path = llama_profile.save(tmp_path / "p.safetensors")
    back = Profile.load(path)
    assert back.equals(llama_profile)
    for name in ("qsim_layer", "qsim_head", "qsim_kv_head", "qsim_prune_layer", "qsim_prune_head", "bi_layer", "prune_score",
                 "prune_order", "budget_layer_frac", "qstats_mean", "qstats_var", "layer_map"):
        a, b = getattr(llama_profile, name), getattr(back, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert back.provenance == llama_profile.provenance and back.prune_beta == llama_profile.prune_beta
    assert Profile.from_gguf_kv({k: v for k, (v, _) in llama_profile.to_gguf_kv().items()}).equals(llama_profile)


def test_profile_contents_and_provenance(llama_profile: Profile, tiny_llama: TinyModel) -> None:
    p = llama_profile
    assert (p.arch, p.n_layer, p.n_head, p.n_head_kv, p.head_dim) == ("LlamaForCausalLM", 4, 4, 2, 32)
    assert p.qsim_window == 16 and p.qstats_n_sink_skipped == 4 and abs(p.prune_beta - 0.2) < 1e-7
    assert np.all((p.qsim_head > -1) & (p.qsim_head <= 1)) and np.all(p.qstats_var > 0)
    np.testing.assert_allclose(p.qsim_layer, p.qsim_head.mean(1), atol=1e-6)
    pv = p.provenance
    assert (pv.n_samples, pv.seq_len, pv.n_tokens) == (3, 64, 192)
    files = sorted(f for f in tiny_llama.hf_dir.iterdir() if f.suffix == ".safetensors")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    assert pv.weights_sha256 == h.hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", pv.tokenizer_sha256) and re.fullmatch(r"[0-9a-f]{64}", pv.corpus_sha256)
    assert set(pv.versions) == {"tappa-local", "torch", "transformers"} and pv.versions["torch"] == torch.__version__
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", pv.created)


def test_budget_plan_follows_qsim(llama_profile: Profile) -> None:
    p = llama_profile
    w = np.clip(np.asarray(tappa_weights(p.qsim_layer.tolist())), 0, None)
    np.testing.assert_allclose(p.budget_layer_frac, w / w.sum(), atol=1e-7)
    assert p.budget_allocation == "tappa" and abs(float(p.budget_layer_frac.sum()) - 1) < 1e-6
    # lower q-sim (less predictable attention) -> a larger share, and integer budgets sum exactly
    order_q = np.argsort(p.qsim_layer)
    assert np.all(np.diff(p.budget_layer_frac[order_q]) <= 1e-7)
    spec = BudgetSpec(total=4 * 36 + 1000, n_sink=4, window=32)
    budgets = allocate("tappa", p.n_layer, spec, p.qsim_layer.tolist())
    assert sum(budgets) == spec.total and min(budgets) >= 36
    assert budgets[int(order_q[0])] >= budgets[int(order_q[-1])]


def test_calibrate_texts_with_in_memory_model(tiny_llama: TinyModel) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama.hf_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_llama.hf_dir)
    cfg = CalibrationConfig(n_samples=1, seq_len=64, window=16, budget_allocation="uniform")
    p = calibrate_texts(model, stdlib_corpus(20_000), cfg, progress=False, tokenizer=tok, model_id="tiny")
    assert p.provenance.model_id == "tiny" and p.provenance.weights_sha256.startswith("mem:")
    np.testing.assert_allclose(p.budget_layer_frac, np.full(4, 0.25), atol=1e-7)


# --------------------------------------------------------------------------- command line


def test_cli_writes_profile_and_table(tiny_llama: TinyModel, corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.safetensors"
    rc = cli.main(["calibrate", str(tiny_llama.hf_dir), str(corpus_dir), "-o", str(out), "--n-samples", "2", "--seq-len", "64",
                   "--window", "16", "--beta", "0.3", "--no-progress", "--budget-total", "400"])
    assert rc == 0
    prof = Profile.load(out)
    assert prof.prune_beta == pytest.approx(0.3) and prof.budget_total == 400 and prof.provenance.n_samples == 2
    table = capsys.readouterr().out
    assert "qsim(W=16)" in table and "prune#" in table and len([ln for ln in table.splitlines() if re.match(r"\s+\d+\s+-?\d", ln)]) == 4


@pytest.mark.parametrize(
    "case,expect",
    [
        ("missing-corpus", "corpus path not found"),
        ("empty-corpus", "is empty"),
        ("unsupported", "unsupported: GPT2LMHeadModel"),
        ("bad-option", "n_samples must be >= 1"),
        ("bad-window", "must hold at least one window"),
        ("bad-device-map", "--device-map is not valid JSON"),
        ("missing-model", "model directory not found"),
    ],
)
def test_cli_errors_are_one_line_exit_2_no_output(case: str, expect: str, tiny_llama: TinyModel, tiny_gpt2: Path, corpus_dir: Path,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "p.safetensors"
    (tmp_path / "blank.txt").write_text("  \n\n")
    model, corpus, extra = str(tiny_llama.hf_dir), str(corpus_dir), ["--n-samples", "1", "--seq-len", "64", "--window", "16"]
    if case == "missing-corpus":
        corpus = str(tmp_path / "nothing-here")
    elif case == "empty-corpus":
        corpus = str(tmp_path / "blank.txt")
    elif case == "unsupported":
        model = str(tiny_gpt2)
    elif case == "bad-option":
        extra = ["--n-samples", "0"]
    elif case == "bad-window":
        extra = ["--seq-len", "16", "--window", "32"]
    elif case == "bad-device-map":
        extra = extra + ["--device-map", "{oops"]
    elif case == "missing-model":
        model = str(tmp_path / "no-model")
    rc = cli.main(["calibrate", model, corpus, "-o", str(out), "--no-progress", *extra])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("tappa-local:")]
    assert rc == 2
    assert len(err) == 1 and expect in err[0], err
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_cli_help_lists_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["calibrate", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--n-samples", "--seq-len", "--window", "--beta", "--n-sink", "--device-map", "--dtype", "--allocation", "-o"):
        assert flag in text
    assert "calibrate" in json.dumps(cli.COMMANDS)
