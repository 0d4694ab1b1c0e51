"""Bad input -> one clear error line, exit code 2, and no output file (nor scratch) left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tappa_local.localmodels import TinyModel

from .test_convert_support import assert_clean_failure, make_profile, run_convert


@pytest.fixture()
def annotated(tiny_llama: TinyModel, tmp_path: Path) -> Path:
    prof = tmp_path / "p.safetensors"
    make_profile(tiny_llama, seed=21).save(prof)
    out = tmp_path / "annotated.gguf"
    rc, _, err = run_convert("--annotate", tiny_llama.gguf_path, "--profile", prof, "-o", out)
    assert rc == 0, err
    return out


def _profile(model: TinyModel, tmp: Path, name: str, **kw: object) -> Path:
    p = tmp / f"{name}.safetensors"
    make_profile(model, **kw).save(p)  # type: ignore[arg-type]
    return p


def test_truncated_gguf(annotated: Path, tmp_path: Path) -> None:
    data = annotated.read_bytes()
    for name, cut in (("data", int(len(data) * 0.7)), ("meta", 300)):
        bad = tmp_path / f"cut-{name}.gguf"
        bad.write_bytes(data[:cut])
        out = tmp_path / f"from-cut-{name}.gguf"
        rc, _, err = run_convert(bad, "--quantize", "Q8_0", "-o", out)
        assert_clean_failure(rc, err, out, str(bad), "truncated")


def test_corrupt_gguf(annotated: Path, tmp_path: Path) -> None:
    data = bytearray(annotated.read_bytes())
    not_gguf = tmp_path / "not.gguf"
    not_gguf.write_bytes(b"PK\x03\x04" + bytes(data[4:]))
    out = tmp_path / "o1.gguf"
    rc, _, err = run_convert(not_gguf, "--drop-layers", "1", "-o", out)
    assert_clean_failure(rc, err, out, "not a GGUF file")

    garbled = tmp_path / "garbled.gguf"
    data[24:32] = b"\xff" * 8  # the first key's length
    garbled.write_bytes(bytes(data))
    out = tmp_path / "o2.gguf"
    rc, _, err = run_convert(garbled, "--drop-layers", "1", "-o", out)
    assert_clean_failure(rc, err, out, str(garbled))


def test_profile_from_another_model_on_a_checkpoint(tiny_llama: TinyModel, tiny_qwen2: TinyModel, tmp_path: Path) -> None:
    # another architecture: refused before anything is converted
    out = tmp_path / "a.gguf"
    rc, _, err = run_convert(tiny_llama.hf_dir, "--profile", _profile(tiny_qwen2, tmp_path, "qwen"), "-o", out)
    assert_clean_failure(rc, err, out, "does not belong to", "architecture")
    # same shape, other weights: found by the weight manifest (computed while converting)
    out = tmp_path / "b.gguf"
    rc, _, err = run_convert(tiny_llama.hf_dir, "--profile", _profile(tiny_llama, tmp_path, "other", hashes=False),
                             "--outtype", "f32", "-o", out)
    assert_clean_failure(rc, err, out, "does not belong to", "weights sha256")


def test_wrong_layer_count(tiny_llama: TinyModel, annotated: Path, tmp_path: Path) -> None:
    six = _profile(tiny_llama, tmp_path, "six", n_layer=6)
    for src in (tiny_llama.hf_dir, annotated):
        out = tmp_path / "six.gguf"
        rc, _, err = run_convert(src, "--profile", six, "-o", out)
        assert_clean_failure(rc, err, out, "layers: profile 6 vs model 4")


@pytest.mark.parametrize("spec,needle", [
    ("4", "would remove all 4 layers"),
    ("9", "would remove all 4 layers"),
    ("0,1,2,3", "would remove all 4 layers"),
    ("7,", "do not exist"),
    ("0", "must be >= 1"),
    ("1,1", "listed twice"),
    ("two", "give a count"),
])
def test_drop_layers_out_of_range(annotated: Path, tmp_path: Path, spec: str, needle: str) -> None:
    out = tmp_path / "dropped.gguf"
    rc, _, err = run_convert(annotated, "--drop-layers", spec, "-o", out)
    assert_clean_failure(rc, err, out, needle)


def test_drop_layers_needs_a_profile(tiny_llama: TinyModel, tmp_path: Path) -> None:
    out = tmp_path / "dropped.gguf"
    rc, _, err = run_convert(tiny_llama.gguf_path, "--drop-layers", "1", "-o", out)
    assert_clean_failure(rc, err, out, "needs a TAPPA profile")


def test_unsupported_architecture(tiny_llama: TinyModel, tmp_path: Path) -> None:
    ckpt = tmp_path / "gpt2"
    ckpt.mkdir()
    cfg = json.loads((tiny_llama.hf_dir / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    for f in tiny_llama.hf_dir.iterdir():
        if f.name != "config.json":
            shutil.copy(f, ckpt / f.name)
    out = tmp_path / "gpt2.gguf"
    rc, _, err = run_convert(ckpt, "--profile", _profile(tiny_llama, tmp_path, "p"), "-o", out)
    assert_clean_failure(rc, err, out, "'GPT2LMHeadModel' is not supported")

    from tappa_convert.ggufpy import gguf

    g = gguf()
    bad = tmp_path / "gpt2-model.gguf"
    w = g.GGUFWriter(bad, arch="gpt2")
    w.add_block_count(2)
    import numpy as np

    w.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "gpt2-annotated.gguf"
    rc, _, err = run_convert("--annotate", bad, "--profile", tmp_path / "p.safetensors", "-o", out)
    assert_clean_failure(rc, err, out, "'gpt2' is not supported")


def test_missing_files(tiny_llama: TinyModel, annotated: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    cases = [
        ((tmp_path / "no-such-dir", "--profile", tmp_path / "none.safetensors"), "no such directory"),
        ((tmp_path / "no-such.gguf", "--quantize", "Q8_0"), "no such file"),
        (("--annotate", tmp_path / "gone.gguf", "--profile", tmp_path / "none.safetensors"), "no such file"),
        (("--annotate", annotated, "--profile", tmp_path / "none.safetensors"), "no such profile file"),
        ((tiny_llama.hf_dir, "--corpus", tmp_path / "no-corpus.txt"), "corpus path(s) not found"),
        ((tmp_path, "--profile", tmp_path / "none.safetensors"), "has no config.json"),
        ((annotated, "--quantize", "Q9_Z"), "unknown quantization type"),
        ((annotated,), "nothing to do"),
        (("--annotate", annotated), "--annotate needs --profile"),
        ((annotated, "--outtype", "f16", "--quantize", "Q8_0"), "--outtype applies to transformers checkpoints"),
    ]
    for args, needle in cases:
        rc, _, err = run_convert(*args, "-o", out)
        assert_clean_failure(rc, err, out, needle)


def test_failure_leaves_an_existing_output_untouched(annotated: Path, tmp_path: Path) -> None:
    out = tmp_path / "keep.gguf"
    out.write_bytes(b"previous result")
    rc, _, err = run_convert(annotated, "--drop-layers", "4", "-o", out)
    assert rc == 2
    assert out.read_bytes() == b"previous result"


def test_interrupt_leaves_no_output(tiny_llama: TinyModel, tmp_path: Path) -> None:
    """A real SIGINT / SIGTERM in the middle of a conversion: exit 130, no file, no scratch, no converter left."""
    prof = _profile(tiny_llama, tmp_path, "p")
    # the tiny model converts in about a second, so a signal could arrive after the end: the pinned converter is
    # held at start-up (a sitecustomize that only acts in that script) until the test has interrupted the run
    stall = tmp_path / "stall"
    stall.mkdir()
    (stall / "sitecustomize.py").write_text(
        "import sys, time\n"
        "if any(a.endswith('convert_hf_to_gguf.py') for a in getattr(sys, 'orig_argv', ())):\n"
        "    time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(stall), os.environ.get("PYTHONPATH")]))}
    for sig in (signal.SIGINT, signal.SIGTERM):
        out = tmp_path / f"interrupted-{sig.name}.gguf"
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from tappa_convert.cli import main; sys.exit(main())",
             str(tiny_llama.hf_dir), "--profile", str(prof), "-o", str(out), "--outtype", "f32", "--no-progress"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            # a shell that starts a job in the background (`cmd &`, nohup) ignores SIGINT, and Python keeps an ignored
            # SIGINT ignored: give the converter the default disposition a user's terminal gives it
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        scratch: list[Path] = []
        while time.monotonic() < deadline and proc.poll() is None:  # wait until the converter is running
            scratch = [p for p in tmp_path.iterdir() if p.name.endswith(".tappa-tmp")]
            if scratch and _converter_running(proc.pid):
                break
            time.sleep(0.05)
        assert scratch and proc.poll() is None, "the conversion finished before it could be interrupted"
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "interrupted; no output written" in err
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tappa-tmp")]
        gone = time.monotonic() + 10  # the terminated converter may take a moment to exit on a busy machine
        while _converter_running(proc.pid, any_parent=True, out=out) and time.monotonic() < gone:
            time.sleep(0.1)
        assert not _converter_running(proc.pid, any_parent=True, out=out)


def _converter_running(pid: int, any_parent: bool = False, out: Path | None = None) -> bool:
    import psutil

    if any_parent:  # any converter still writing into this run's scratch directory
        assert out is not None
        cmds = (" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
        return any("convert_hf_to_gguf.py" in c and f"/.{out.name}." in c for c in cmds)
    try:
        return any("convert_hf_to_gguf.py" in " ".join(c.cmdline()) for c in psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return False
