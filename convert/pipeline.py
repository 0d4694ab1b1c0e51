"""The conversion steps, in order, with everything written inside a scratch directory.

HF checkpoint: [calibrate] -> pinned converter -> [llama.cpp quantizer: type and/or layer
removal] -> rewrite with the ``tappa.*`` keys -> read back and verify -> rename onto ``-o``.

GGUF input: [llama.cpp quantizer] -> rewrite with the new / pruned profile (or, when only
quantizing, check the quantizer kept every ``tappa.*`` key and re-apply them if not) -> verify
-> rename.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tappa_local import schema as S
from tappa_local.budget import Allocation
from tappa_local.errors import ProfileError
from tappa_local.modelfile import read_gguf_metadata
from tappa_local.profile import Profile

from .archs import require_gguf_arch
from .calibration import CalibrationOptions, calibrate_model
from .checkpoint import read_checkpoint, resolve_model
from .dropplan import DropRequest, resolve_drop
from .errors import ConvertError
from .ggufinfo import GGUFInfo, read_gguf_info
from .hfconvert import OUTTYPES, convert_checkpoint
from .identity import SourceHashes, checkpoint_hashes, facts_from_checkpoint, facts_from_gguf, fit_to_model, require_match
from .output import Workspace, workspace
from .progress import ProgressConfig, say
from .quantize import QuantizeRequest, ftype_value, quantize
from .rewrite import KVValue, as_stored, field_values, rewrite_gguf, schema_kv, slice_layers


@dataclass(frozen=True)
class BudgetOptions:
    """The default KV-budget plan written with the profile; None keeps the profile's."""

    allocation: str | None = None
    total: int | None = None
    window: int | None = None
    n_sink: int | None = None

    @property
    def requested(self) -> bool:
        return any(v is not None for v in (self.allocation, self.total, self.window, self.n_sink))

    def apply(self, profile: Profile) -> Profile:
        if not self.requested:
            return profile
        for name, v in (("--budget-total", self.total), ("--budget-window", self.window), ("--budget-n-sink", self.n_sink)):
            if v is not None and v < 0:
                raise ConvertError(f"{name} must be >= 0, got {v}")
        return profile.with_budget(
            Allocation(self.allocation or profile.budget_allocation),
            total=profile.budget_total if self.total is None else self.total,
            window=self.window,
            n_sink=self.n_sink,
        )


@dataclass(frozen=True)
class ConvertJob:
    source: str  # HF checkpoint directory, hub id, or a .gguf file
    output: Path
    outtype: str | None = None  # HF input only (default: the converter's "auto")
    quantize: str | None = None  # llama.cpp type name, e.g. Q4_K_M
    drop: DropRequest | None = None
    profile_path: Path | None = None
    calibration: CalibrationOptions = CalibrationOptions()
    budget: BudgetOptions = BudgetOptions()
    annotate: bool = False  # the source must be a GGUF and a profile given
    force: bool = False  # accept identity (not geometry) differences
    threads: int = 0
    allow_requantize: bool = False


@dataclass
class ConvertReport:
    output: Path
    bytes: int = 0
    n_layer: int = 0
    arch: str = ""
    profile: str = "none"  # where the written profile came from
    dropped: tuple[int, ...] = ()  # indices in the input
    dropped_original: tuple[int, ...] = ()  # original (pre-any-pruning) indices
    quantized: str | None = None
    metadata_reapplied: bool = False
    timings: dict[str, float] = field(default_factory=dict)


class _Timer:
    def __init__(self, report: ConvertReport) -> None:
        self.report = report

    def step(self, name: str) -> "_Step":
        return _Step(self.report, name)


class _Step:
    def __init__(self, report: ConvertReport, name: str) -> None:
        self.report, self.name = report, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.report.timings[self.name] = self.report.timings.get(self.name, 0.0) + time.perf_counter() - self.t0


class _Background:
    """Hash the checkpoint while the converter runs (a daemon thread: Ctrl-C never waits for it)."""

    def __init__(self, path: Path) -> None:
        self.result: SourceHashes | BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(path,), name="tappa-hash", daemon=True)
        self.thread.start()

    def _run(self, path: Path) -> None:
        try:
            self.result = checkpoint_hashes(path)
        except BaseException as exc:  # noqa: BLE001 - re-raised by get()
            self.result = exc

    def get(self) -> SourceHashes:
        while self.thread.is_alive():
            self.thread.join(0.2)
        if isinstance(self.result, BaseException):
            raise self.result
        assert self.result is not None
        return self.result


def is_gguf_source(source: str) -> bool:
    p = Path(source).expanduser()
    return p.is_file() or (not p.exists() and p.suffix.lower() == ".gguf")


def run(job: ConvertJob, progress: ProgressConfig) -> ConvertReport:
    if job.outtype is not None and job.outtype not in OUTTYPES:
        raise ConvertError(f"--outtype {job.outtype!r}: choose from {', '.join(OUTTYPES)}")
    if job.profile_path is not None and job.calibration.requested:
        raise ConvertError("give either --profile or calibration options (--corpus, --n-samples, ...), not both")
    if job.quantize is not None:
        ftype_value(job.quantize)  # an unknown type fails now, not after a long conversion
    if is_gguf_source(job.source):
        return _run_gguf(job, progress)
    if job.annotate:
        raise ConvertError(f"--annotate takes a .gguf file; {job.source} is not one")
    return _run_hf(job, progress)


# --------------------------------------------------------------------------- HF checkpoint


def _run_hf(job: ConvertJob, progress: ProgressConfig) -> ConvertReport:
    report = ConvertReport(output=job.output)
    timer = _Timer(report)
    t_all = time.perf_counter()
    ckpt = read_checkpoint(resolve_model(job.source))
    report.arch = ckpt.gguf_arch
    hashing = _Background(ckpt.path)

    if job.profile_path is not None:
        profile = Profile.load(job.profile_path)
        report.profile = str(job.profile_path)
    else:
        with timer.step("calibrate"):
            profile = calibrate_model(job.source, job.calibration, progress.enabled).profile
        report.profile = "calibrated"
    profile_name = str(job.profile_path or "(calibrated)")
    require_match(profile, facts_from_checkpoint(ckpt, None), profile_name, job.force)  # geometry, before any work
    profile = job.budget.apply(profile)
    drop = resolve_drop(job.drop, profile, ckpt.n_layer) if job.drop is not None else ()

    with workspace(job.output) as ws:
        with timer.step("convert"):
            converted = convert_checkpoint(ckpt, ws.path("converted"), job.outtype or "auto", progress).path
        # the converter's own output (verified in full at the end)
        info = read_gguf_info(converted, check_data=False, require_arch=require_gguf_arch)
        hashes = hashing.get()
        require_match(profile, facts_from_checkpoint(ckpt, hashes), profile_name, job.force)
        require_match(profile, facts_from_gguf(info), profile_name, job.force)
        _finish(job, ws, info, converted, profile, drop, hashes, report, timer, progress)
    report.timings["total"] = time.perf_counter() - t_all
    return report


# --------------------------------------------------------------------------- GGUF input


def _run_gguf(job: ConvertJob, progress: ProgressConfig) -> ConvertReport:
    report = ConvertReport(output=job.output)
    timer = _Timer(report)
    t_all = time.perf_counter()
    src = Path(job.source).expanduser()
    if job.outtype is not None:
        raise ConvertError("--outtype applies to transformers checkpoints; to change a GGUF's tensor types use --quantize")
    if job.calibration.requested:
        raise ConvertError(f"calibration needs the transformers checkpoint, not {src}: calibrate it, then pass --profile")
    if job.annotate and job.profile_path is None:
        raise ConvertError("--annotate needs --profile PROFILE.safetensors")
    info = read_gguf_info(src, require_arch=require_gguf_arch)
    report.arch = info.arch
    facts = facts_from_gguf(info)

    changed = False
    if job.profile_path is not None:
        profile: Profile | None = fit_to_model(Profile.load(job.profile_path), facts)
        require_match(profile, facts, str(job.profile_path), job.force)
        report.profile, changed = str(job.profile_path), True
    else:
        profile = info.profile()
        report.profile = "stored" if profile is not None else "none"
    if job.budget.requested:
        if profile is None:
            raise ConvertError(f"the budget options need a TAPPA profile; {src} carries none (pass --profile)")
        profile, changed = job.budget.apply(profile), True
    drop = resolve_drop(job.drop, profile, info.n_layer) if job.drop is not None else ()
    if not (changed or drop or job.quantize):
        raise ConvertError(f"nothing to do for {src}: pass --profile, --drop-layers, --quantize or a budget option")

    with workspace(job.output) as ws:
        if changed or drop or profile is None:
            _finish(job, ws, info, src, profile, drop, None, report, timer, progress)
        else:
            _quantize_keeping_metadata(job, ws, info, src, report, timer, progress)
    report.timings["total"] = time.perf_counter() - t_all
    return report


# --------------------------------------------------------------------------- shared steps


def _quantize_step(job: ConvertJob, ws: Workspace, src: Path, drop: Sequence[int], report: ConvertReport,
                   timer: _Timer, progress: ProgressConfig) -> Path:
    out = ws.path("quantized" if job.quantize else "pruned")
    with timer.step("quantize"):
        quantize(src, out, QuantizeRequest(job.quantize, tuple(drop), job.threads, job.allow_requantize), progress)
    report.quantized = job.quantize.upper() if job.quantize else None
    return out


def _finish(job: ConvertJob, ws: Workspace, info: GGUFInfo, cur: Path, profile: Profile | None, drop: Sequence[int],
            hashes: SourceHashes | None, report: ConvertReport, timer: _Timer, progress: ProgressConfig) -> None:
    """[quantize/prune] -> write the tappa keys -> verify -> commit."""
    if drop or job.quantize:
        cur = _quantize_step(job, ws, cur, drop, report, timer, progress)
    final = as_stored(profile.pruned(list(drop))) if profile is not None else None
    if final is None and hashes is None:
        _verify_and_commit(ws, cur, None, info.n_layer - len(drop), report, timer)
        return
    keep = [i for i in range(info.n_layer) if i not in set(drop)]
    replace_kv: dict[str, KVValue] = {}
    if drop:
        for key, value in field_values(cur, info.per_layer_arch_keys()).items():
            replace_kv[key] = slice_layers(value, keep)
    append = schema_kv(final.to_gguf_kv()) if final is not None else {}
    if hashes is not None:
        T = schema_kv({S.SOURCE_WEIGHTS_SHA256: (hashes.weights_sha256, S.Kind.STR),
                       S.SOURCE_TOKENIZER_SHA256: (hashes.tokenizer_sha256, S.Kind.STR)})
        append.update({k: v for k, v in T.items() if v.value})
    keep_source = hashes is None  # the file's own tappa.source.* stay unless we know better

    def drop_key(name: str) -> bool:
        return name.startswith(S.NAMESPACE) and not (keep_source and name.startswith("tappa.source."))

    out = ws.path("final")
    with timer.step("metadata"):
        rewrite_gguf(cur, out, replace=replace_kv, drop=drop_key, append=append, progress=progress)
    if drop:
        report.dropped = tuple(drop)
        assert profile is not None
        report.dropped_original = tuple(int(profile.layer_map[i]) for i in drop)
    _verify_and_commit(ws, out, final, info.n_layer - len(drop), report, timer)


def _tappa_kv(path: Path) -> dict[str, Any]:
    meta = read_gguf_metadata(path, keep_arrays=frozenset(S.KEY_BY_NAME))
    return {k: v for k, v in meta.items() if k.startswith(S.NAMESPACE)}


def _quantize_keeping_metadata(job: ConvertJob, ws: Workspace, info: GGUFInfo, src: Path, report: ConvertReport,
                               timer: _Timer, progress: ProgressConfig) -> None:
    """Quantize a GGUF whose profile stays as it is; re-apply the tappa keys if the quantizer lost any."""
    cur = _quantize_step(job, ws, src, (), report, timer, progress)
    before, after = _tappa_kv(src), _tappa_kv(cur)
    if before != after:
        say(progress, "the quantizer changed tappa.* metadata; re-applying it")
        exact = field_values(src, list(before))
        out = ws.path("reapplied")
        with timer.step("metadata"):
            rewrite_gguf(cur, out, replace={}, drop=lambda k: k.startswith(S.NAMESPACE), append=exact, progress=progress)
        if _tappa_kv(out) != before:
            raise ConvertError(f"could not carry the tappa.* metadata of {src} through quantization")
        cur, report.metadata_reapplied = out, True
    profile = info.profile()
    _verify_and_commit(ws, cur, profile, info.n_layer, report, timer)


def _verify_and_commit(ws: Workspace, path: Path, profile: Profile | None, n_layer: int, report: ConvertReport,
                       timer: _Timer) -> None:
    """Read the result back (structure, block count, exact profile) and move it onto the destination."""
    with timer.step("verify"):
        info = read_gguf_info(path)
        if info.n_layer != n_layer:
            raise ConvertError(f"internal error: the result has {info.n_layer} layers, expected {n_layer}")
        if profile is not None:
            try:
                back = info.profile()
            except ProfileError as exc:
                raise ConvertError(f"internal error: the written profile does not read back: {exc}") from None
            if back is None or not back.equals(profile):
                raise ConvertError("internal error: the profile read back from the result differs from the one written")
    report.n_layer = info.n_layer
    report.bytes = info.size
    report.profile = report.profile if profile is not None else "none"
    ws.commit(path)


def report_dict(report: ConvertReport) -> dict[str, Any]:
    """The report as JSON-ready data."""
    d = dataclasses.asdict(report)
    d["output"] = str(report.output)
    d["dropped"], d["dropped_original"] = list(report.dropped), list(report.dropped_original)
    return d


def describe(report: ConvertReport) -> str:
    """A short human summary of what was written."""
    parts = [f"wrote {report.output} ({report.bytes / 2**20:.1f} MiB, {report.arch}, {report.n_layer} layers"]
    if report.quantized:
        parts.append(f", {report.quantized}")
    parts.append(")")
    lines = ["".join(parts)]
    lines.append(f"  profile: {report.profile}")
    if report.dropped:
        lines.append(f"  removed layers {list(report.dropped)} (original indices {list(report.dropped_original)})")
    if report.metadata_reapplied:
        lines.append("  tappa.* metadata re-applied after quantization")
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in report.timings.items())
    lines.append(f"  time: {steps}")
    return "\n".join(lines)


__all__ = ["BudgetOptions", "ConvertJob", "ConvertReport", "describe", "is_gguf_source", "report_dict", "run"]
