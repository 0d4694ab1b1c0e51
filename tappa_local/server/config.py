"""Settings of ``tappa-local serve``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..chat.model import ModelOptions


@dataclass(frozen=True)
class ServeConfig:
    model: ModelOptions
    host: str = "127.0.0.1"
    port: int = 8000
    #: the model id clients use ("model": ...); default: the GGUF's file name without .gguf
    alias: str | None = None
    #: requests that may wait while one runs; more get HTTP 503
    max_queue: int = 8
    api_key: str | None = None
    #: browser origins allowed to call the API from other pages (CORS); the built-in page needs none
    allow_origins: tuple[str, ...] = field(default_factory=tuple)
    webchat: bool = True

    @property
    def model_alias(self) -> str:
        if self.alias:
            return self.alias
        name = self.model.model_path.name
        return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name
