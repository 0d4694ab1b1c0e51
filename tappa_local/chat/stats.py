"""Where the KV memory stands: one snapshot type for ``/stats``, the status line and the server's JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class LayerOccupancy:
    layer: int
    budget: int  #: tokens kept after an eviction
    capacity: int  #: cells allocated (budget + headroom)
    used: int  #: cells holding a token now
    n_evictions: int
    n_evicted: int
    kv_bytes: int = 0  #: this layer's K/V cells


@dataclass(frozen=True)
class MemoryReport:
    """A snapshot of ``TappaLlama.kv_stats()`` plus the position limit of the sequence."""

    compressed: bool
    kv_bytes: int  #: K/V bytes allocated now
    full_kv_bytes: int  #: what the stock cache would allocate for n_ctx
    tokens_seen: int  #: positions evaluated in the current sequence
    limit: int  #: positions the sequence may reach (trained context or n_ctx, the smaller)
    n_ctx: int
    n_ctx_train: int
    scorer: str | None
    allocation: str | None
    layers: tuple[LayerOccupancy, ...]

    @property
    def kv_mib(self) -> float:
        return self.kv_bytes / 2**20

    @property
    def full_kv_mib(self) -> float:
        return self.full_kv_bytes / 2**20

    @property
    def kv_fraction(self) -> float:
        """Compressed KV memory as a fraction of the full cache."""
        return self.kv_bytes / self.full_kv_bytes if self.full_kv_bytes else 0.0

    @property
    def cells_bytes(self) -> int:
        """K/V cells of all layers; ``kv_bytes`` also counts what the scorer keeps (recorded queries)."""
        return sum(layer.kv_bytes for layer in self.layers)

    @property
    def used_tokens(self) -> int:
        return sum(layer.used for layer in self.layers)

    @property
    def budget_tokens(self) -> int:
        return sum(layer.budget for layer in self.layers)

    @property
    def capacity_tokens(self) -> int:
        return sum(layer.capacity for layer in self.layers)

    @property
    def n_evicted(self) -> int:
        return sum(layer.n_evicted for layer in self.layers)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            kv_mib=self.kv_mib,
            full_kv_mib=self.full_kv_mib,
            kv_fraction=self.kv_fraction,
            used_tokens=self.used_tokens,
            budget_tokens=self.budget_tokens,
            capacity_tokens=self.capacity_tokens,
            n_evicted=self.n_evicted,
            cells_mib=self.cells_bytes / 2**20,
        )
        return d


def position_limit(llm: Any) -> int:
    """Positions one sequence may use: the trained context, or n_ctx when that is smaller."""
    n_ctx = int(llm.n_ctx())
    trained = int(llm.geometry.n_ctx_train)
    return min(n_ctx, trained) if trained > 0 else n_ctx


def memory_report(llm: Any) -> MemoryReport:
    kv = llm.kv_stats()
    return MemoryReport(
        compressed=bool(kv.enabled),
        kv_bytes=int(kv.kv_bytes),
        full_kv_bytes=int(kv.full_kv_bytes),
        tokens_seen=int(kv.tokens_seen),
        limit=position_limit(llm),
        n_ctx=int(llm.n_ctx()),
        n_ctx_train=int(llm.geometry.n_ctx_train),
        scorer=llm.scorer,
        allocation=llm.allocation,
        layers=tuple(
            LayerOccupancy(lk.layer, lk.budget, lk.capacity, lk.used, lk.n_evictions, lk.n_evicted, lk.kv_bytes)
            for lk in kv.layers
        ),
    )


def status_line(r: MemoryReport) -> str:
    """One short line: KV memory against the full cache, positions against the limit."""
    kind = "compressed KV" if r.compressed else "KV (uncompressed)"
    return (
        f"[{kind} {r.kv_mib:.2f} MiB of {r.full_kv_mib:.2f} MiB full ({100 * r.kv_fraction:.1f}%) | "
        f"positions {r.tokens_seen:,}/{r.limit:,}]"
    )


def format_report(r: MemoryReport) -> str:
    """The ``/stats`` text."""
    lines = [
        (
            f"KV memory      : {r.kv_mib:.3f} MiB now, the full cache for n_ctx {r.n_ctx:,} would take "
            f"{r.full_kv_mib:.3f} MiB ({100 * r.kv_fraction:.1f}%)"
        ),
    ]
    other = r.kv_bytes - r.cells_bytes
    if r.compressed:
        extra = f", {other / 2**20:.3f} MiB recorded queries of the scorer" if other > 0 else ""
        lines.append(f"  of which     : {r.cells_bytes / 2**20:.3f} MiB K/V cells (kept tokens + headroom){extra}")
    lines.append(
        f"positions      : {r.tokens_seen:,} seen in this sequence, limit {r.limit:,} "
        f"(trained context {r.n_ctx_train:,}, n_ctx {r.n_ctx:,})"
    )
    if not r.compressed:
        lines.append("compression    : off (stock llama.cpp cache)")
        return "\n".join(lines)
    lines += [
        f"compression    : scorer {r.scorer}, allocation {r.allocation}",
        (
            f"tokens kept    : {r.used_tokens:,} cells used of {r.capacity_tokens:,} allocated "
            f"(budget {r.budget_tokens:,} after an eviction), {r.n_evicted:,} evicted so far"
        ),
        "",
        f"{'layer':>5} {'budget':>7} {'capacity':>8} {'used':>6} {'occupancy':>9} {'evictions':>9} {'evicted':>8}",
    ]
    for lo in r.layers:
        occ = 100 * lo.used / lo.capacity if lo.capacity else 0.0
        lines.append(
            f"{lo.layer:>5} {lo.budget:>7} {lo.capacity:>8} {lo.used:>6} {occ:>8.0f}% {lo.n_evictions:>9} {lo.n_evicted:>8}"
        )
    return "\n".join(lines)
