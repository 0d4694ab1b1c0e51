"""``--drop-layers``: how many (or which) layers to remove, resolved against the TAPPA prune order."""

from __future__ import annotations

from dataclasses import dataclass

from tappa_local.profile import Profile

from .errors import ConvertError


@dataclass(frozen=True)
class DropRequest:
    """Either ``count`` layers in prune order, or explicit ``layers`` (indices in the input file)."""

    count: int | None = None
    layers: tuple[int, ...] | None = None

    @property
    def text(self) -> str:
        return str(self.count) if self.count is not None else ",".join(map(str, self.layers or ()))


def parse_drop_layers(text: str) -> DropRequest:
    """``"3"`` -> the 3 first layers of the prune order; ``"5,7"`` or ``"5,"`` -> exactly those layers."""
    s = text.strip()
    try:
        if "," in s:
            layers = tuple(int(x) for x in s.split(",") if x.strip())
            if not layers:
                raise ValueError
            if len(set(layers)) != len(layers):
                raise ConvertError(f"--drop-layers {text}: a layer is listed twice")
            return DropRequest(layers=layers)
        n = int(s)
    except ValueError:
        raise ConvertError(f"--drop-layers {text!r}: give a count (e.g. 2) or a comma list of layer indices (e.g. 5,7 or 5,)") from None
    return DropRequest(count=n)


def resolve_drop(req: DropRequest, profile: Profile | None, n_layer: int) -> tuple[int, ...]:
    """The layer indices (in the input, ascending) to remove."""
    if profile is None:
        raise ConvertError(
            f"--drop-layers {req.text} needs a TAPPA profile (the prune order and the per-layer arrays to rewrite): "
            "the input carries none; pass --profile PROFILE or calibrate"
        )
    if profile.n_layer != n_layer:
        raise ConvertError(f"--drop-layers {req.text}: the profile describes {profile.n_layer} layers, the model has {n_layer}")
    if req.count is not None:
        if req.count < 1:
            raise ConvertError(f"--drop-layers {req.count}: the count must be >= 1")
        if req.count >= n_layer:
            raise ConvertError(f"--drop-layers {req.count} would remove all {n_layer} layers; at most {n_layer - 1} can be dropped")
        return tuple(sorted(int(i) for i in profile.prune_order[: req.count].tolist()))
    layers = req.layers or ()
    bad = [i for i in layers if not 0 <= i < n_layer]
    if bad:
        raise ConvertError(f"--drop-layers {req.text}: layer(s) {bad} do not exist; the model has layers 0..{n_layer - 1}")
    if len(layers) >= n_layer:
        raise ConvertError(f"--drop-layers {req.text} would remove all {n_layer} layers; at most {n_layer - 1} can be dropped")
    return tuple(sorted(layers))
