"""Train tappa-mini, the bundled default model, from scratch on this machine.

Deterministic: fixed seeds, and every batch is a pure function of (seed, step), so the same
command reproduces the same run (bit-for-bit on the same hardware / thread count).

Run from the repository root (about an hour on 2 CPU cores)::

    nohup nice -n 5 .venv/bin/python -m bench.train.train \\
        --run-dir ~/.cache/tappa-local/train/tappa-mini \\
        --export tappa_local/assets/tappa-mini > train.log 2>&1 &

then evaluate and write the model card with ``python -m bench.train.evaluate`` and
``python -m bench.train.card`` (see ``bench/train/README.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.train.config import TrainConfig, parse_heads, parse_phases

log = logging.getLogger("tappa-mini")

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def build_model(cfg: TrainConfig) -> Any:
    import torch  # noqa: PLC0415
    from transformers import LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    m = cfg.model
    hf_cfg = LlamaConfig(
        vocab_size=m.vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads,
        max_position_embeddings=m.max_position_embeddings,
        rope_theta=m.rope_theta,
        initializer_range=m.init_std,
        rms_norm_eps=1e-6,
        tie_word_embeddings=m.tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        attention_bias=False,
        mlp_bias=False,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(hf_cfg)
    model.config._attn_implementation = "sdpa"
    return model


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio * lr`` at the last step (both counted
    from ``schedule_origin``)."""
    step -= cfg.schedule_origin
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.schedule_origin - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def phase_of(cfg: TrainConfig, step: int) -> int:
    s = 0
    for i, p in enumerate(cfg.phases):
        s += p.steps
        if step < s:
            return i
    return len(cfg.phases) - 1


def loss_fn(logits: Any, labels: Any, answer: Any, answer_weight: float) -> tuple[Any, dict[str, float]]:
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: N812, PLC0415

    v = logits.shape[-1]
    ce = F.cross_entropy(logits.reshape(-1, v).float(), labels.reshape(-1), ignore_index=-100, reduction="none")
    valid = labels.reshape(-1) != -100
    ans = answer.reshape(-1)
    lm = ce[valid].mean()
    stats = {"lm_loss": lm.item()}
    total = lm
    if bool(ans.any()):
        a = ce[ans].mean()
        total = lm + answer_weight * a
        pred = logits.reshape(-1, v)[ans].argmax(-1)
        stats["answer_loss"] = a.item()
        stats["answer_token_acc"] = float((pred == labels.reshape(-1)[ans]).float().mean())
        stats["answer_tokens"] = int(ans.sum())
    stats["loss"] = total.item()
    return total, stats


class HeadProbe:
    """Recomputes one attention head's scores (post-RoPE) from the inputs of its layer, for an
    attention-supervision loss: ``-log`` of the attention the head gives to a target key.

    Used twice: a *copy* head is pushed, at every position whose next token is a copy of an earlier
    token (a retrieval answer digit, the second half of a repeat), to attend to that earlier token;
    a *previous-token* head is pushed to attend to the position before. These are training signals
    only (the architecture is the stock Llama one); they shortcut the long plateau before small
    models discover induction / retrieval heads on their own.
    """

    def __init__(self, model: Any, layer: int, head: int, name: str) -> None:
        self.name = name
        self.attn = model.model.layers[layer].self_attn
        cfg = model.config
        self.head = head
        self.kv_head = head // (cfg.num_attention_heads // cfg.num_key_value_heads)
        self.hd = self.attn.head_dim
        self.captured: dict[str, Any] = {}
        self.handle = self.attn.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.captured["h"] = kwargs.get("hidden_states", args[0] if args else None)
        self.captured["pe"] = kwargs["position_embeddings"]

    def loss(self, copy_src: Any) -> tuple[Any, dict[str, float]]:
        """``copy_src`` (B, T): the key each position should attend to, -1 where unsupervised."""
        import torch  # noqa: PLC0415
        import torch.nn.functional as F  # noqa: N812, PLC0415
        from transformers.models.llama.modeling_llama import rotate_half  # noqa: PLC0415

        h = self.captured.pop("h")
        cos, sin = self.captured.pop("pe")
        hd, qh, kh = self.hd, self.head, self.kv_head
        q = F.linear(h, self.attn.q_proj.weight[qh * hd : (qh + 1) * hd])
        k = F.linear(h, self.attn.k_proj.weight[kh * hd : (kh + 1) * hd])
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        nll, hits, n = [], 0, 0
        for b in range(copy_src.shape[0]):
            pos = torch.nonzero(copy_src[b] >= 0).flatten()
            if pos.numel() == 0:
                continue
            scores = (q[b, pos] @ k[b].T).float() * self.attn.scaling  # (n, T)
            keys = torch.arange(k.shape[1], device=k.device)
            scores = scores.masked_fill(keys[None, :] > pos[:, None], float("-inf"))
            logp = torch.log_softmax(scores, dim=-1)
            target = copy_src[b, pos]
            nll.append(-logp.gather(1, target[:, None]).squeeze(1))
            hits += int((logp.argmax(-1) == target).sum())
            n += int(pos.numel())
        if not nll:
            return None, {}
        loss = torch.cat(nll).mean()
        return loss, {f"{self.name}_loss": loss.item(), f"{self.name}_acc": hits / n}


def save_state(path: Path, model: Any, opt: Any, step: int) -> None:
    import torch  # noqa: PLC0415

    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
    os.replace(tmp, path)


def export(model: Any, tok_dir: Path, out: Path, dtype: str) -> None:
    """HF checkpoint: config + safetensors (``dtype``) + generation config + tokenizer files."""
    import torch  # noqa: PLC0415
    from transformers import GenerationConfig  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    for f in out.glob("*.safetensors"):
        f.unlink()
    tdtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    m = model.to("cpu").to(tdtype)
    m.config.dtype = tdtype
    m.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, do_sample=False, max_new_tokens=64)
    m.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copy2(tok_dir / name, out / name)
    model.to(torch.float32)


def hardware() -> dict[str, Any]:
    import torch  # noqa: PLC0415

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def apply_override(cfg: TrainConfig, item: str) -> TrainConfig:
    """``answer_weight=1.5`` / ``data.p_lm=0.2`` / ``model.hidden_size=192`` -> updated config."""
    key, _, raw = item.partition("=")
    section, _, name = key.rpartition(".")
    target = getattr(cfg, section) if section else cfg
    if not dataclasses.is_dataclass(target) or name not in {f.name for f in dataclasses.fields(target)}:
        raise SystemExit(f"--set {item}: unknown field {key!r}")
    old = getattr(target, name)
    value = type(old)(raw) if isinstance(old, (int, float)) and not isinstance(old, bool) else raw
    updated = dataclasses.replace(target, **{name: value})
    return dataclasses.replace(cfg, **{section: updated}) if section else updated


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.train.train",
        description=(
            "Train tappa-mini (a small LlamaForCausalLM with RoPE and GQA) from scratch on the local Python "
            "standard library mixed with synthetic long-range retrieval tasks (passkey, key-value, variable "
            "lookup), with a short-to-long context curriculum. Deterministic for a given seed and thread count."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--run-dir", type=Path, default=Path.home() / ".cache/tappa-local/train/tappa-mini",
                    help="working directory: tokenizer, token cache, resumable state, logs, metrics")
    ap.add_argument("--export", type=Path, default=None,
                    help="write the final HF checkpoint here (e.g. tappa_local/assets/tappa-mini)")
    ap.add_argument("--export-dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    ap.add_argument("--phases", type=str, default=None,
                    help="override the curriculum: comma-separated SEQxBATCHxSTEPS, e.g. 256x32x300,2048x4x200")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    ap.add_argument("--seed", type=int, default=None, help="seed for init and data (default: the recipe's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the committed model was trained on cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the recipe's 2)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a numeric recipe field, e.g. answer_weight=1 or data.p_lm=0.2 (repeatable)")
    ap.add_argument("--resume", action="store_true", help="continue from <run-dir>/state.pt if present")
    ap.add_argument("--rewarm", action="store_true",
                    help="with --resume: restart the LR schedule (warmup + cosine) at the resumed step")
    ap.add_argument("--prev-heads", type=str, default=None, metavar="L:H:K,...",
                    help="offset-head supervision: head H of layer L attends K tokens back (default: the recipe's; '' = none)")
    ap.add_argument("--show-samples", type=int, default=0, help="print the tail of N sequences of step 0 and exit")
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout)
    cfg = TrainConfig()
    if args.phases:
        cfg = dataclasses.replace(cfg, phases=parse_phases(args.phases))
    if args.lr is not None:
        cfg = dataclasses.replace(cfg, lr=args.lr)
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    if args.threads is not None:
        cfg = dataclasses.replace(cfg, threads=args.threads)
    if args.prev_heads is not None:
        cfg = dataclasses.replace(cfg, prev_heads=parse_heads(args.prev_heads))
    for item in args.set:
        cfg = apply_override(cfg, item)

    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from tappa_local import tasks  # noqa: PLC0415
    from bench.train import data  # noqa: PLC0415

    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = torch.device(args.device)
    run = args.run_dir.expanduser()
    run.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    # ---- tokenizer and corpus
    tok_dir = run / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        log.info("training the tokenizer (vocab %d) on the stdlib training split", cfg.model.vocab_size)
        data.train_tokenizer(tok_dir, cfg.model.vocab_size, cfg.data.tokenizer_max_lines)
    tok = data.load_tokenizer(tok_dir)
    if len(tok) != cfg.model.vocab_size:
        raise SystemExit(f"tokenizer has {len(tok)} tokens, model expects {cfg.model.vocab_size}")
    log.info("tokenizing the training split")
    stream = data.corpus_tokens(tok, cache=run / "corpus_tokens.npy")
    train_docs = tasks.training_documents()
    held_docs = tasks.heldout_documents()
    corpus_info = {
        "stdlib_root": str(tasks.stdlib_root()),
        "python": platform.python_version(),
        "train_files": len(train_docs),
        "train_chars": sum(len(t) for _, t in train_docs),
        "train_tokens": int(len(stream)),
        "train_sha256": tasks.documents_sha256(train_docs),
        "heldout_paths": list(tasks.HELDOUT_PATHS),
        "heldout_files": len(held_docs),
        "heldout_chars": sum(len(t) for _, t in held_docs),
        "heldout_sha256": tasks.documents_sha256(held_docs),
    }
    log.info("corpus: %s", json.dumps(corpus_info))
    maker = data.SampleMaker(tok, stream, cfg.data)

    if args.show_samples:
        b = data.make_batch(maker, cfg, 0, cfg.phases[0])
        for i in range(min(args.show_samples, len(b.kinds))):
            print(data.describe(b, tok, i))
        return 0

    # ---- model / optimizer
    model = build_model(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %s params=%.2fM", json.dumps(dataclasses.asdict(cfg.model)), n_params / 1e6)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas, eps=1e-8,
    )  # fmt: skip
    start = 0
    state_path = run / "state.pt"
    metrics_path = run / "metrics.jsonl"
    if args.resume and state_path.is_file():
        st = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        start = int(st["step"])
        if args.rewarm:
            cfg = dataclasses.replace(cfg, schedule_origin=start)
        if start >= cfg.total_steps:
            raise SystemExit(f"the saved state is at step {start}, the curriculum has only {cfg.total_steps} steps")
        log.info("resumed at step %d%s", start, " (LR schedule restarted)" if args.rewarm else "")
    elif metrics_path.exists():
        metrics_path.unlink()
    (run / "config.json").write_text(cfg.dumps())

    # ---- train
    total = cfg.total_steps
    tokens_seen = sum(p.batch * p.seq_len * min(p.steps, max(0, start - sum(q.steps for q in cfg.phases[:i])))
                      for i, p in enumerate(cfg.phases))  # fmt: skip
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    copy_probe = None
    prev_probes: list[tuple[int, HeadProbe]] = []
    if cfg.copy_weight > 0:
        layer = cfg.copy_layer % cfg.model.num_layers
        copy_probe = HeadProbe(model, layer, cfg.copy_head, "copy")
        log.info("copy-head supervision on layer %d head %d (weight %g)", layer, cfg.copy_head, cfg.copy_weight)
    if cfg.prev_weight > 0:
        for layer, head, k in cfg.prev_heads:
            layer %= cfg.model.num_layers
            prev_probes.append((k, HeadProbe(model, layer, head, "prev")))
            log.info("offset-head supervision: layer %d head %d attends %d back (weight %g)", layer, head, k, cfg.prev_weight)
    window: list[dict[str, float]] = []
    t_train = time.time()
    t_last, tok_last = t_train, 0
    model.train()
    for step in range(start, total):
        pi = phase_of(cfg, step)
        phase = cfg.phases[pi]
        lr = lr_at(cfg, step)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = data.make_batch(maker, cfg, step, phase)
        inp = torch.from_numpy(batch.input_ids).to(device)
        lab = torch.from_numpy(batch.labels).to(device)
        ans = torch.from_numpy(batch.answer).to(device)
        if autocast is not None:
            with autocast:
                logits = model(input_ids=inp).logits
        else:
            logits = model(input_ids=inp).logits
        loss, stats = loss_fn(logits, lab, ans, cfg.answer_weight)
        if copy_probe is not None:
            closs, cstats = copy_probe.loss(torch.from_numpy(batch.copy_src).to(device))
            if closs is not None:
                loss = loss + cfg.copy_weight * closs
                stats.update(cstats)
        if prev_probes:
            # every 4th real position (all of them would only cost time) attends to the one k back
            t = phase.seq_len
            pos = np.arange(t)
            plosses, pstats_all = [], []
            for k, probe in prev_probes:
                prev = np.where((pos % 4 == k % 4) & (pos >= k) & (batch.labels != -100), pos - k, -1)
                ploss, pstats = probe.loss(torch.from_numpy(prev).to(device))
                if ploss is not None:
                    plosses.append(ploss)
                    pstats_all.append(pstats)
            if plosses:
                loss = loss + cfg.prev_weight * torch.stack(plosses).mean()
                stats["prev_loss"] = float(np.mean([p["prev_loss"] for p in pstats_all]))
                stats["prev_acc"] = float(np.mean([p["prev_acc"] for p in pstats_all]))
        stats["loss"] = loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        opt.step()
        tokens_seen += phase.batch * phase.seq_len
        tok_last += phase.batch * phase.seq_len
        stats["grad_norm"] = gnorm
        window.append(stats)
        last_of_phase = step + 1 == sum(p.steps for p in cfg.phases[: pi + 1])
        if (step + 1) % cfg.log_every == 0 or step + 1 == total or last_of_phase:
            now = time.time()
            rec: dict[str, Any] = {"step": step + 1, "phase": pi, "seq_len": phase.seq_len, "lr": lr,
                                   "tokens": tokens_seen, "elapsed_s": round(now - t_start, 1),
                                   "tok_per_s": round(tok_last / max(now - t_last, 1e-9), 1)}  # fmt: skip
            for k in ("loss", "lm_loss", "answer_loss", "answer_token_acc", "copy_loss", "copy_acc", "prev_loss", "prev_acc",
                      "grad_norm"):
                vals = [w[k] for w in window if k in w]
                if vals:
                    rec[k] = round(float(np.mean(vals)), 4)
            with metrics_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            done = step + 1 - start
            eta = (now - t_train) / max(done, 1) * (total - step - 1)
            log.info(
                "step %d/%d T=%d loss %.3f lm %.3f ans %.3f ans_acc %.2f copy_acc %.2f prev_acc %.2f lr %.2e %.0f tok/s "
                "elapsed %.1fm eta %.1fm",
                step + 1, total, phase.seq_len, rec["loss"], rec["lm_loss"], rec.get("answer_loss", float("nan")),
                rec.get("answer_token_acc", float("nan")), rec.get("copy_acc", float("nan")),
                rec.get("prev_acc", float("nan")), lr, rec["tok_per_s"], (now - t_start) / 60, eta / 60,
            )  # fmt: skip
            window, t_last, tok_last = [], now, 0
        if last_of_phase or (step + 1) % cfg.save_every == 0:
            save_state(state_path, model, opt, step + 1)
            if last_of_phase:
                log.info("phase %d (T=%d) done; state saved", pi, phase.seq_len)

    wall = time.time() - t_start
    records = [json.loads(x) for x in metrics_path.read_text().splitlines()]
    summary = {
        "config": cfg.to_json(),
        "params": n_params,
        "params_non_embedding": n_params - sum(p.numel() for n, p in model.named_parameters() if "embed" in n or "lm_head" in n),
        "steps": total,
        "tokens": tokens_seen,
        "wall_time_s": round(wall, 1),
        "train_time_s": round(time.time() - t_train, 1),
        "resumed_from_step": start,
        "final": records[-1] if records else {},
        "corpus": corpus_info,
        "hardware": {**hardware(), "device": args.device, "threads": cfg.threads},
        "command": " ".join([Path(sys.executable).name, "-m", "bench.train.train", *(argv if argv is not None else sys.argv[1:])]),
        "log": records,
    }
    (run / "metrics.json").write_text(json.dumps(summary, indent=1))
    log.info("training done in %.1f min, %d tokens, final loss %.3f", wall / 60, tokens_seen, summary["final"].get("loss", float("nan")))
    final_dir = run / "final"
    export(model, tok_dir, final_dir, args.export_dtype)
    shutil.copy2(run / "metrics.json", final_dir / "train_metrics.json")
    if args.export:
        export(model, tok_dir, args.export, args.export_dtype)
        shutil.copy2(run / "metrics.json", args.export / "train_metrics.json")
        log.info("exported to %s", args.export)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
