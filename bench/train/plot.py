"""A dependency-free line chart written as a small palette PNG (no matplotlib on the target machines)."""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

# classic 5x7 bitmap font, one byte per column, bit 0 = top row
_FONT: dict[str, tuple[int, ...]] = {
    " ": (0, 0, 0, 0, 0), "(": (0x00, 0x1C, 0x22, 0x41, 0x00), ")": (0x00, 0x41, 0x22, 0x1C, 0x00),
    "+": (0x08, 0x08, 0x3E, 0x08, 0x08), ",": (0x00, 0x50, 0x30, 0x00, 0x00), "-": (0x08, 0x08, 0x08, 0x08, 0x08),
    ".": (0x00, 0x60, 0x60, 0x00, 0x00), "/": (0x20, 0x10, 0x08, 0x04, 0x02), ":": (0x00, 0x36, 0x36, 0x00, 0x00),
    "=": (0x14, 0x14, 0x14, 0x14, 0x14), "%": (0x23, 0x13, 0x08, 0x64, 0x62), "_": (0x40, 0x40, 0x40, 0x40, 0x40),
    "0": (0x3E, 0x51, 0x49, 0x45, 0x3E), "1": (0x00, 0x42, 0x7F, 0x40, 0x00), "2": (0x42, 0x61, 0x51, 0x49, 0x46),
    "3": (0x21, 0x41, 0x45, 0x4B, 0x31), "4": (0x18, 0x14, 0x12, 0x7F, 0x10), "5": (0x27, 0x45, 0x45, 0x45, 0x39),
    "6": (0x3C, 0x4A, 0x49, 0x49, 0x30), "7": (0x01, 0x71, 0x09, 0x05, 0x03), "8": (0x36, 0x49, 0x49, 0x49, 0x36),
    "9": (0x06, 0x49, 0x49, 0x29, 0x1E), "A": (0x7E, 0x11, 0x11, 0x11, 0x7E), "B": (0x7F, 0x49, 0x49, 0x49, 0x36),
    "C": (0x3E, 0x41, 0x41, 0x41, 0x22), "D": (0x7F, 0x41, 0x41, 0x22, 0x1C), "E": (0x7F, 0x49, 0x49, 0x49, 0x41),
    "F": (0x7F, 0x09, 0x09, 0x01, 0x01), "G": (0x3E, 0x41, 0x41, 0x51, 0x32), "H": (0x7F, 0x08, 0x08, 0x08, 0x7F),
    "I": (0x00, 0x41, 0x7F, 0x41, 0x00), "J": (0x20, 0x40, 0x41, 0x3F, 0x01), "K": (0x7F, 0x08, 0x14, 0x22, 0x41),
    "L": (0x7F, 0x40, 0x40, 0x40, 0x40), "M": (0x7F, 0x02, 0x04, 0x02, 0x7F), "N": (0x7F, 0x04, 0x08, 0x10, 0x7F),
    "O": (0x3E, 0x41, 0x41, 0x41, 0x3E), "P": (0x7F, 0x09, 0x09, 0x09, 0x06), "Q": (0x3E, 0x41, 0x51, 0x21, 0x5E),
    "R": (0x7F, 0x09, 0x19, 0x29, 0x46), "S": (0x46, 0x49, 0x49, 0x49, 0x31), "T": (0x01, 0x01, 0x7F, 0x01, 0x01),
    "U": (0x3F, 0x40, 0x40, 0x40, 0x3F), "V": (0x1F, 0x20, 0x40, 0x20, 0x1F), "W": (0x7F, 0x20, 0x18, 0x20, 0x7F),
    "X": (0x63, 0x14, 0x08, 0x14, 0x63), "Y": (0x03, 0x04, 0x78, 0x04, 0x03), "Z": (0x61, 0x51, 0x49, 0x45, 0x43),
}  # fmt: skip

#: palette index -> RGB
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),  # 0 background
    (0, 0, 0),  # 1 axes / text
    (205, 205, 205),  # 2 grid
    (31, 119, 180),  # 3 blue
    (214, 39, 40),  # 4 red
    (44, 160, 44),  # 5 green
    (255, 127, 14),  # 6 orange
    (148, 103, 189),  # 7 purple
)
SERIES_COLORS = (3, 4, 5, 6, 7)


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = width, height
        self.px = bytearray(width * height)

    def set(self, x: int, y: int, c: int) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            self.px[y * self.w + x] = c

    def line(self, x0: int, y0: int, x1: int, y1: int, c: int, thick: int = 1, dash: int = 0) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err, i = dx + dy, 0
        while True:
            if not dash or (i // dash) % 2 == 0:
                for ox in range(thick):
                    for oy in range(thick):
                        self.set(x0 + ox, y0 + oy, c)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy
            i += 1

    def text(self, x: int, y: int, s: str, c: int = 1, scale: int = 1, anchor: str = "left") -> None:
        s = s.upper()
        width = len(s) * 6 * scale
        if anchor == "center":
            x -= width // 2
        elif anchor == "right":
            x -= width
        for ch in s:
            cols = _FONT.get(ch, _FONT[" "])
            for cx, bits in enumerate(cols):
                for cy in range(7):
                    if bits >> cy & 1:
                        for ox in range(scale):
                            for oy in range(scale):
                                self.set(x + cx * scale + ox, y + cy * scale + oy, c)
            x += 6 * scale

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w : (y + 1) * self.w]) for y in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 3, 0, 0, 0))
            + chunk(b"PLTE", b"".join(bytes(rgb) for rgb in PALETTE))
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


@dataclass
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]


@dataclass
class Panel:
    title: str
    xlabel: str
    series: list[Series]
    ymin: float | None = None
    ymax: float | None = None
    vlines: list[float] = field(default_factory=list)  #: dashed vertical markers (e.g. curriculum phases)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo if hi > lo else 1.0
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step) * step
    out, v = [], start
    while v <= hi + 1e-9 * span:
        out.append(round(v, 10))
        v += step
    return out


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M"
    if abs(v) >= 1e3:
        return f"{v / 1e3:g}K"
    return f"{v:g}"


def draw_panel(cv: Canvas, p: Panel, x0: int, y0: int, w: int, h: int) -> None:
    left, right, top, bottom = x0 + 46, x0 + w - 10, y0 + 24, y0 + h - 34
    xs = [x for s in p.series for x in s.xs]
    ys = [y for s in p.series for y in s.ys if math.isfinite(y)]
    if not xs or not ys:
        return
    xlo, xhi = min(xs), max(xs)
    ylo = p.ymin if p.ymin is not None else min(ys)
    yhi = p.ymax if p.ymax is not None else max(ys)
    if yhi <= ylo:
        yhi = ylo + 1.0

    def tx(x: float) -> int:
        return int(left + (x - xlo) / max(xhi - xlo, 1e-12) * (right - left))

    def ty(y: float) -> int:
        return int(bottom - (min(max(y, ylo), yhi) - ylo) / (yhi - ylo) * (bottom - top))

    for v in _nice_ticks(ylo, yhi):
        cv.line(left, ty(v), right, ty(v), 2)
        cv.text(left - 4, ty(v) - 3, _fmt(v), anchor="right")
    for v in _nice_ticks(xlo, xhi):
        cv.line(tx(v), bottom, tx(v), bottom + 3, 1)
        cv.text(tx(v), bottom + 7, _fmt(v), anchor="center")
    for v in p.vlines:
        cv.line(tx(v), top, tx(v), bottom, 1, dash=3)
    cv.line(left, top, left, bottom, 1)
    cv.line(left, bottom, right, bottom, 1)
    cv.text((left + right) // 2, y0 + 6, p.title, anchor="center")
    cv.text((left + right) // 2, bottom + 19, p.xlabel, anchor="center")
    lx = left + 8
    for i, s in enumerate(p.series):
        c = SERIES_COLORS[i % len(SERIES_COLORS)]
        pts = [(tx(x), ty(y)) for x, y in zip(s.xs, s.ys) if math.isfinite(y)]
        for (a, b), (cx, cy) in zip(pts, pts[1:]):
            cv.line(a, b, cx, cy, c, thick=2)
        cv.line(lx, top + 8, lx + 14, top + 8, c, thick=2)
        cv.text(lx + 18, top + 5, s.label)
        lx += 18 + 6 * len(s.label) + 16


def render(panels: Sequence[Panel], panel_w: int = 420, panel_h: int = 300) -> bytes:
    cv = Canvas(panel_w * len(panels), panel_h)
    for i, p in enumerate(panels):
        draw_panel(cv, p, i * panel_w, 0, panel_w, panel_h)
    return cv.png()
