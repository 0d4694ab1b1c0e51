"""The conversation as the user saw it; kept whole whatever the KV cache evicts or a rollover drops."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: entry kinds, in the order they usually appear
KINDS = ("system", "document", "user", "assistant", "notice", "rollover", "reset")


@dataclass(frozen=True)
class Entry:
    kind: str
    text: str
    time: float
    meta: dict[str, Any] = field(default_factory=dict)


class Transcript:
    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def add(self, kind: str, text: str, **meta: Any) -> Entry:
        if kind not in KINDS:
            raise ValueError(f"unknown transcript entry kind {kind!r}")
        entry = Entry(kind, text, time.time(), dict(meta))
        self.entries.append(entry)
        return entry

    def to_json(self) -> str:
        return json.dumps(
            {"format": "tappa-local-chat-transcript/1", "entries": [asdict(e) for e in self.entries]}, indent=2
        )

    def to_markdown(self) -> str:
        out: list[str] = ["# tappa-local chat transcript", ""]
        for e in self.entries:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.time))
            if e.kind in ("user", "assistant", "system"):
                out += [f"## {e.kind} ({stamp})", "", e.text, ""]
            elif e.kind == "document":
                m = e.meta
                out += [
                    f"> document loaded ({stamp}): `{m.get('name')}`, {m.get('n_tokens', '?')} tokens, sha256 {m.get('sha256', '?')[:16]}",
                    "",
                ]
            else:
                out += [f"> {e.kind} ({stamp}): {e.text}", ""]
        return "\n".join(out)

    def save(self, path: str | Path) -> Path:
        """Write JSON for a ``.json`` path, Markdown otherwise; returns the path written."""
        p = Path(path).expanduser()
        p.parent.mkdir(parents=True, exist_ok=True)
        text = self.to_json() if p.suffix.lower() == ".json" else self.to_markdown()
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(p)
        return p
