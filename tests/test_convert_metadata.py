"""tappa-convert's metadata layer: exact profile round trips through GGUF, replacement without
duplicates, everything else byte-identical, the schema table, and --annotate validation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tappa_local import schema as S
from tappa_local.localmodels import TinyModel
from tappa_local.modelfile import read_gguf_metadata
from tappa_local.profile import Profile

from .test_convert_support import assert_clean_failure, make_profile, run_convert


def _annotate(model: TinyModel, profile: Profile, tmp: Path, name: str, *extra: object) -> tuple[int, str, Path]:
    prof_path = tmp / f"{name}.safetensors"
    profile.save(prof_path)
    out = tmp / f"{name}.gguf"
    rc, _, err = run_convert("--annotate", model.gguf_path, "--profile", prof_path, "-o", out, *extra)
    return rc, err, out


def _tensor_bytes(path: Path) -> dict[str, bytes]:
    from tappa_convert.ggufpy import gguf

    r = gguf().GGUFReader(path)
    return {t.name: (int(t.tensor_type), tuple(int(x) for x in t.shape), t.data.tobytes()) for t in r.tensors}


def _read_profile(path: Path) -> Profile:
    from tappa_convert.ggufinfo import read_gguf_info

    p = read_gguf_info(path).profile()
    assert p is not None
    return p


@pytest.mark.parametrize("qstats", [True, False], ids=["with-qstats", "no-qstats"])
def test_profile_round_trip_is_exact(tiny_llama: TinyModel, tmp_path: Path, qstats: bool) -> None:
    profile = make_profile(tiny_llama, seed=3, qstats=qstats)
    rc, err, out = _annotate(tiny_llama, profile, tmp_path, "rt")
    assert rc == 0, err
    back = _read_profile(out)
    assert back.equals(profile)
    # field by field, arrays bit for bit (equals() compares the GGUF values)
    for name in ("qsim_layer", "qsim_head", "qsim_kv_head", "qsim_prune_head", "bi_layer", "prune_score", "budget_layer_frac"):
        a, b = getattr(profile, name), getattr(back, name)
        assert a.dtype == b.dtype == np.float32 and a.tobytes() == b.tobytes(), name
    assert back.prune_order.tolist() == profile.prune_order.tolist()
    assert (back.qstats_mean is None) == (not qstats)
    assert back.provenance == profile.provenance


def test_pruned_profile_round_trip_is_exact(tiny_llama: TinyModel, tmp_path: Path) -> None:
    """A profile that already records removed layers keeps layer_map / prune.removed exactly."""
    from tappa_convert.rewrite import as_stored

    full = make_profile(tiny_llama, seed=4, n_layer=6)  # a 6-layer "original" pruned down to the 4 the file has
    pruned = full.pruned([1, 4])
    assert pruned.n_layer == 4 and pruned.removed_layers == (1, 4)
    rc, err, out = _annotate(tiny_llama, replace(pruned, prune_beta=0.2), tmp_path, "pr", "--force")
    assert rc == 0, err
    back = _read_profile(out)
    assert back.equals(as_stored(replace(pruned, prune_beta=0.2)))
    assert back.prune_beta == float(np.float32(0.2))  # an f32 scalar: stored as float32, read back exactly that
    assert back.layer_map.tolist() == [0, 2, 3, 5] and back.removed_layers == (1, 4)


def test_annotation_changes_only_tappa_keys(tiny_llama: TinyModel, tmp_path: Path) -> None:
    rc, err, once = _annotate(tiny_llama, make_profile(tiny_llama, seed=1), tmp_path, "once")
    assert rc == 0, err
    # replace the profile of an annotated file: the new one wins, no duplicate keys, no leftovers
    second = make_profile(tiny_llama, seed=2, qstats=False)
    prof2 = tmp_path / "second.safetensors"
    second.save(prof2)
    twice = tmp_path / "twice.gguf"
    rc, _, err = run_convert("--annotate", once, "--profile", prof2, "-o", twice)
    assert rc == 0, err
    assert _read_profile(twice).equals(second)
    meta_src = read_gguf_metadata(tiny_llama.gguf_path, keep_arrays=True)
    for f in (once, twice):
        meta = read_gguf_metadata(f, keep_arrays=True)
        assert {k: v for k, v in meta.items() if not k.startswith("tappa.")} == meta_src
        assert list(meta)[: len(meta_src)] == list(meta_src), "original keys keep their order"
        assert _tensor_bytes(f) == _tensor_bytes(tiny_llama.gguf_path)
    keys2 = [k for k in read_gguf_metadata(twice) if k.startswith("tappa.")]
    assert len(keys2) == len(set(keys2))
    assert S.QSTATS_MEAN not in keys2, "the old profile's query stats must not survive a replacement"


def test_annotate_validates_geometry_and_identity(tiny_llama: TinyModel, tiny_qwen2: TinyModel, tmp_path: Path) -> None:
    ok = make_profile(tiny_llama, seed=5)
    rc, err, annotated = _annotate(tiny_llama, ok, tmp_path, "base")
    assert rc == 0, err

    cases = {
        "layers": (make_profile(tiny_llama, seed=6, n_layer=6), ["layers: profile 6 vs model 4"]),
        "heads": (replace(make_profile(tiny_llama, seed=6), n_head_kv=4, qsim_kv_head=np.zeros((4, 4), np.float32)),
                  ["KV heads: profile 4 vs model 2"]),
        "arch": (make_profile(tiny_qwen2, seed=6), ["architecture: profile Qwen2ForCausalLM", "weights sha256"]),
        "weights": (make_profile(tiny_llama, seed=6, hashes=False), ["weights sha256: profile", "tokenizer sha256", "--force"]),
    }
    for name, (prof, needles) in cases.items():
        p = tmp_path / f"{name}.safetensors"
        prof.save(p)
        out = tmp_path / f"{name}.gguf"
        rc, _, err = run_convert("--annotate", annotated, "--profile", p, "-o", out)
        assert_clean_failure(rc, err, out, "does not belong to", *needles)

    # identity (not geometry) differences pass with --force
    p = tmp_path / "weights.safetensors"
    out = tmp_path / "forced.gguf"
    rc, _, err = run_convert("--annotate", annotated, "--profile", p, "-o", out, "--force")
    assert rc == 0, err
    assert out.is_file()


def test_plain_gguf_is_checked_against_the_profiles_source_weights(tiny_llama: TinyModel, tmp_path: Path) -> None:
    """A plain GGUF carries no digest; the norm weights of the profile's source checkpoint tell a sibling apart."""
    import shutil

    from safetensors.numpy import load_file, save_file

    sibling = tmp_path / "sibling-hf"
    shutil.copytree(tiny_llama.hf_dir, sibling)
    weights = load_file(str(sibling / "model.safetensors"))
    weights["model.layers.2.input_layernorm.weight"] = weights["model.layers.2.input_layernorm.weight"] * np.float32(1.5)
    save_file(weights, str(sibling / "model.safetensors"), metadata={"format": "pt"})
    prof = replace(make_profile(tiny_llama, seed=10), provenance=replace(make_profile(tiny_llama).provenance, model_id=str(sibling)))
    rc, err, out = _annotate(tiny_llama, prof, tmp_path, "sibling")
    assert_clean_failure(rc, err, out, "blk.2.attn_norm.weight differs from model.layers.2.input_layernorm.weight", "--force")
    # the same profile pointing at the real source is accepted (the norms are compared and equal)
    rc, err, _ = _annotate(tiny_llama, make_profile(tiny_llama, seed=10), tmp_path, "source")
    assert rc == 0, err


def test_annotate_auto_fits_a_full_profile_to_a_pruned_file(tiny_llama: TinyModel, tmp_path: Path) -> None:
    full = make_profile(tiny_llama, seed=7)
    rc, err, annotated = _annotate(tiny_llama, full, tmp_path, "full")
    assert rc == 0, err
    pruned = tmp_path / "pruned.gguf"
    rc, _, err = run_convert(annotated, "--drop-layers", "1,2", "-o", pruned)
    assert rc == 0, err
    # re-annotating the pruned file with the full (4-layer) profile prunes the profile to match
    p = tmp_path / "full.safetensors"
    out = tmp_path / "re.gguf"
    rc, _, err = run_convert("--annotate", pruned, "--profile", p, "-o", out)
    assert rc == 0, err
    assert _read_profile(out).equals(_read_profile(pruned))


def test_budget_options_rewrite_the_default_plan(tiny_llama: TinyModel, tmp_path: Path) -> None:
    rc, err, annotated = _annotate(tiny_llama, make_profile(tiny_llama, seed=8), tmp_path, "b")
    assert rc == 0, err
    out = tmp_path / "uniform.gguf"
    rc, _, err = run_convert(annotated, "--allocation", "uniform", "--budget-total", "512", "--budget-window", "8", "-o", out)
    assert rc == 0, err
    back = _read_profile(out)
    assert back.budget_allocation == "uniform" and back.budget_total == 512 and back.budget_window == 8
    assert back.budget_layer_frac.tolist() == [0.25] * 4


def test_schema_table_lists_every_key() -> None:
    table = S.markdown_table()
    header = table.splitlines()[0]
    for col in ("key", "type", "shape", "meaning", "since"):
        assert col in header
    for k in S.KEYS:
        assert f"`{k.name}`" in table
    assert len(table.splitlines()) == len(S.KEYS) + 2


def test_json_report(tiny_llama: TinyModel, tmp_path: Path) -> None:
    import json

    rc, err, annotated = _annotate(tiny_llama, make_profile(tiny_llama, seed=9), tmp_path, "j")
    assert rc == 0, err
    out = tmp_path / "j-pruned.gguf"
    rc, stdout, err = run_convert(annotated, "--drop-layers", "0,3", "--json", "-o", out)
    assert rc == 0, err
    rep = json.loads(stdout)
    assert rep["output"] == str(out) and rep["n_layer"] == 2 and rep["dropped"] == [0, 3]
    assert rep["bytes"] == out.stat().st_size and rep["profile"] == "stored"
    assert set(rep["timings"]) >= {"quantize", "metadata", "verify", "total"}
