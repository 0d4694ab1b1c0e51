"""Configuration of the tappa-mini training run (all defaults = the committed model's recipe)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """A small Llama: RoPE, GQA (6 query heads share 2 KV heads, head dim 32), SwiGLU, RMSNorm."""

    vocab_size: int = 4096
    hidden_size: int = 192
    num_layers: int = 6
    num_heads: int = 6
    num_kv_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    init_std: float = 0.02
    tie_word_embeddings: bool = False


@dataclass(frozen=True)
class Phase:
    """One curriculum stage: ``steps`` optimizer steps on batches of ``batch`` sequences of ``seq_len`` tokens."""

    seq_len: int
    batch: int
    steps: int


@dataclass(frozen=True)
class DataConfig:
    """What a training sequence is made of (probabilities per sequence)."""

    #: plain language-model windows of the training corpus
    p_lm: float = 0.15
    #: "A B A" sequences of corpus text (the second A is predictable only by looking back)
    p_repeat: float = 0.1
    #: random-token sequences repeated ("R R' ..."): the fastest way to grow induction heads
    p_random_repeat: float = 0.15
    #: random-repeat pieces are drawn from this many token ids (small = every piece is seen often)
    random_repeat_alphabet: int = 512
    #: the rest are retrieval tasks; raw kv / var samples ask up to this many further questions
    max_extra_queries: int = 3
    #: relative weights of the retrieval tasks
    task_weights: tuple[tuple[str, float], ...] = (("passkey", 1.0), ("kv", 1.5), ("var", 1.5))
    #: share of retrieval samples rendered in the chat format (answer ends with ``</s>``)
    p_chat: float = 0.3
    #: share of chat samples that carry a system message
    p_system: float = 0.2
    #: tokenizer size and the corpus share used to train it
    tokenizer_max_lines: int = 200_000


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 1234
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    #: short contexts first (many cheap steps: retrieval circuits form), then the full length
    phases: tuple[Phase, ...] = (
        Phase(seq_len=128, batch=16, steps=1500),
        Phase(seq_len=256, batch=16, steps=800),
        Phase(seq_len=512, batch=8, steps=700),
        Phase(seq_len=1024, batch=4, steps=600),
        Phase(seq_len=2048, batch=2, steps=1000),
    )
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    #: total loss = mean CE over all tokens + answer_weight * mean CE over answer tokens
    answer_weight: float = 2.0
    #: attention supervision: + copy_weight * mean over copied targets of -log(attention of head
    #: ``copy_head`` in layer ``copy_layer`` on the source token); 0 disables it
    copy_weight: float = 1.0
    copy_layer: int = -1
    copy_head: int = 0
    #: the same for offset heads: ``(layer, head, k)`` = that head attends to the token ``k`` back.
    #: One per query head of layer 0 gives every position its last 6 tokens as separate features,
    #: so later heads can match a multi-token key ("fancy-table: ", "key is ") and not just one token.
    prev_weight: float = 1.0
    prev_heads: tuple[tuple[int, int, int], ...] = ((0, 0, 1), (0, 1, 2), (0, 2, 3), (0, 3, 4), (0, 4, 5), (0, 5, 6))
    #: the LR schedule (warmup + cosine) starts at this step; a resumed run with ``--rewarm`` sets it
    #: to the step it resumed at, so the continuation gets a fresh warmup and decay
    schedule_origin: int = 0
    threads: int = 2
    log_every: int = 10
    #: also save the resumable state every this many steps
    save_every: int = 100

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    @property
    def trained_context(self) -> int:
        return max(p.seq_len for p in self.phases)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> TrainConfig:
        d = dict(data)
        d["model"] = ModelConfig(**d["model"])
        dd = dict(d["data"])
        dd["task_weights"] = tuple((str(k), float(v)) for k, v in dd["task_weights"])
        d["data"] = DataConfig(**dd)
        d["phases"] = tuple(Phase(**p) for p in d["phases"])
        d["betas"] = tuple(d["betas"])
        if "prev_layer" in d:  # schema before offset heads: one previous-token head
            d["prev_heads"] = ((int(d.pop("prev_layer")), int(d.pop("prev_head")), 1),)
        d["prev_heads"] = tuple(tuple(int(x) for x in h) for h in d.get("prev_heads", ()))
        return TrainConfig(**d)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def parse_heads(spec: str) -> tuple[tuple[int, int, int], ...]:
    """``"0:0:1,0:1:2"`` -> offset heads (layer:head:offset); ``""`` -> none."""
    out = []
    for part in filter(None, (x.strip() for x in spec.split(","))):
        layer, head, k = (int(x) for x in part.split(":"))
        if k < 1:
            raise ValueError(f"offset head {part!r}: the offset must be >= 1")
        out.append((layer, head, k))
    return tuple(out)


def parse_phases(spec: str) -> tuple[Phase, ...]:
    """``"256x32x300,2048x4x200"`` -> phases (seq_len x batch x steps)."""
    out = []
    for part in spec.split(","):
        seq_len, batch, steps = (int(x) for x in part.strip().lower().split("x"))
        out.append(Phase(seq_len=seq_len, batch=batch, steps=steps))
    if not out:
        raise ValueError("no phases given")
    return tuple(out)
