"""What the chat does as a conversation approaches the model's trained context.

The compressed cache keeps memory bounded however long the conversation gets, but every
token still takes a new RoPE position, and positions past the trained context are out of
distribution. A sequence therefore ends at :attr:`ContextPolicy.limit` positions (the trained
context, or ``--n-ctx`` when smaller). Before that the chat warns (at ``warn_at`` fractions);
at the limit it either

* ``rollover``: starts a new sequence (position 0) that keeps the system prompt and the last
  turns that fit in ``carry_fraction`` of the limit, with each loaded document replaced by a
  one-line note (the documents themselves are no longer visible to the model), or
* ``refuse``: refuses further input until ``/reset``.

Nothing is dropped silently: each warning, rollover and refusal is told to the user and
written to the transcript.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TappaError

POLICIES = ("rollover", "refuse")


class ContextFullError(TappaError):
    """The input cannot be taken in below the position limit."""


@dataclass(frozen=True)
class ContextPolicy:
    limit: int  #: positions one sequence may use
    on_full: str = "rollover"
    warn_at: tuple[float, ...] = (0.75, 0.9)
    carry_fraction: float = 0.25  #: share of the limit the carried turns may take after a rollover
    max_carry_turns: int = 4
    #: positions kept free for the question that follows a loaded document
    question_reserve: int = 64

    def __post_init__(self) -> None:
        if self.on_full not in POLICIES:
            raise ValueError(f"unknown context policy {self.on_full!r}; choose from {POLICIES}")
        if self.limit <= 0:
            raise ValueError("the position limit must be positive")

    def fits(self, positions: int) -> bool:
        return positions <= self.limit

    def warnings_due(self, positions: int, already: set[float]) -> list[float]:
        """Warning thresholds crossed at ``positions`` that have not been announced yet."""
        return [f for f in sorted(self.warn_at) if positions >= f * self.limit and f not in already]

    @property
    def carry_tokens(self) -> int:
        return int(self.carry_fraction * self.limit)

    def describe(self) -> str:
        if self.on_full == "refuse":
            return f"at {self.limit:,} positions the chat refuses further input until /reset"
        return (
            f"at {self.limit:,} positions the chat starts a new sequence keeping the system prompt and up to "
            f"{self.max_carry_turns} recent turns (loaded documents are dropped)"
        )
