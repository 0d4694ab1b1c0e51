"""Evaluate a planned prompt into the cache in ``n_batch`` chunks, with progress.

The cache streams: each chunk is evaluated and then evicted down to the budgets, so a
document far longer than the KV capacity is read in bounded memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .continuation import ContinuationChatHandler, PromptPlan
from .policy import ContextFullError


class ProgressBar(Protocol):
    def update(self, n: int) -> Any: ...

    def close(self) -> Any: ...


#: ``factory(total_tokens, description)`` -> a bar (``tqdm`` fits)
ProgressFactory = Callable[[int, str], ProgressBar]


def evaluate_plan(
    llm: Any,
    handler: ContinuationChatHandler,
    plan: PromptPlan,
    *,
    progress: ProgressFactory | None = None,
    description: str = "reading",
    on_chunk: Callable[[int], None] | None = None,
) -> int:
    """Evaluate the tokens of ``plan`` the cache does not hold yet; returns how many.

    ``on_chunk(n_done)`` runs after every chunk (e.g. to sample ``kv_stats()``). If this is
    interrupted, the ledger forgets the sequence, so the next prompt starts over cleanly.
    """
    if len(plan.tokens) >= int(llm.n_ctx()):
        raise ContextFullError(f"{len(plan.tokens):,} tokens do not fit in n_ctx {int(llm.n_ctx()):,}")
    if plan.reused == 0 and llm.n_tokens > 0:
        llm.clear()
    new = plan.new_tokens
    n_batch = int(llm.n_batch)
    bar = progress(len(new), description) if progress is not None and new else None
    done = 0
    try:
        for start in range(0, len(new), n_batch):
            chunk = new[start : start + n_batch]
            llm.eval(chunk)
            done += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
            if on_chunk is not None:
                on_chunk(done)
    except BaseException:
        handler.forget()
        raise
    finally:
        if bar is not None:
            bar.close()
    handler.commit(plan)
    return done
