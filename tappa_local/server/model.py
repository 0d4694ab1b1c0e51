"""The model behind the server: llama-cpp-python's ``LlamaProxy`` loading a ``TappaLlama``.

Upstream's proxy constructs ``llama_cpp.Llama`` in ``load_llama_from_model_settings``; this
subclass constructs a :class:`MonitoredLlama` (a ``TappaLlama`` that publishes its KV stats)
from :class:`~tappa_local.chat.model.ModelOptions` instead, installs the continuation chat
handler (so a client that re-sends the conversation only costs its new tokens), and refuses
model names it does not serve instead of silently answering with the default model.
"""

from __future__ import annotations

import threading
from typing import Any

from llama_cpp.server.model import LlamaProxy
from llama_cpp.server.settings import ModelSettings

from ..chat.continuation import ContinuationChatHandler, install
from ..chat.model import ModelOptions, load_model
from ..chat.stats import MemoryReport, memory_report
from ..errors import TappaError
from ..runtime import TappaLlama


class UnknownModelError(TappaError):
    """A request named a model this server does not serve."""

    def __init__(self, model: str, served: list[str]) -> None:
        super().__init__(f"The model `{model}` does not exist; this server serves: {', '.join(served)}")
        self.model = model


class MonitoredLlama(TappaLlama):  # type: ignore[misc, valid-type]
    """A ``TappaLlama`` whose latest memory report can be read from any thread.

    ``kv_stats()`` reads the native cache, which must not happen while another thread is
    decoding; the report is therefore refreshed by the decoding thread itself after every
    evaluation (a few ctypes calls per layer, small next to a decode step).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._report_lock = threading.Lock()
        self._report: MemoryReport = memory_report(self)

    def eval(self, tokens: Any) -> None:
        super().eval(tokens)
        self._publish()

    def clear(self) -> None:
        super().clear()
        self._publish()

    def latest_report(self) -> MemoryReport:
        with self._report_lock:
            return self._report

    def _publish(self) -> None:
        report = memory_report(self)
        with self._report_lock:
            self._report = report


class TappaLlamaProxy(LlamaProxy):
    """One ``TappaLlama`` served under ``alias`` (and its file path)."""

    def __init__(self, options: ModelOptions, alias: str) -> None:
        self.options = options
        self.alias = alias
        self.handler: ContinuationChatHandler | None = None
        # upstream's constructor calls self.load_llama_from_model_settings(settings)
        settings = ModelSettings(model=str(options.model_path), model_alias=alias, verbose=options.verbose)
        super().__init__(models=[settings])

    def load_llama_from_model_settings(self, settings: ModelSettings) -> Any:  # type: ignore[override]
        llm = load_model(self.options, cls=MonitoredLlama)
        self.handler = install(llm)
        return llm

    @property
    def llm(self) -> MonitoredLlama:
        assert self._current_model is not None
        return self._current_model  # type: ignore[return-value]

    def served_names(self) -> list[str]:
        return [self.alias, str(self.options.model_path)]

    def check_model(self, model: str | None) -> None:
        if model is not None and model not in self.served_names():
            raise UnknownModelError(model, [self.alias])

    def __call__(self, model: str | None = None) -> Any:
        self.check_model(model)
        return self.llm
