"""Write the tappa-mini model card (README.md) and loss curve (loss.png) from the run's JSON files.

Every number in the card is read from ``train_metrics.json`` (written by ``bench.train.train``)
and ``eval.json`` (written by ``bench.train.evaluate``) in the model directory::

    .venv/bin/python -m bench.train.card --model tappa_local/assets/tappa-mini
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.train import chat, plot
from bench.train.config import TrainConfig


def loss_png(metrics: dict[str, Any]) -> bytes:
    log = metrics["log"]
    xs = [r["tokens"] / 1e6 for r in log]
    bounds, acc = [], 0
    for ph in metrics["config"]["phases"][:-1]:
        acc += ph["steps"] * ph["batch"] * ph["seq_len"]
        bounds.append(acc / 1e6)
    loss_panel = plot.Panel(
        title="training loss (phases: T=" + "/".join(str(p["seq_len"]) for p in metrics["config"]["phases"]) + ")",
        xlabel="tokens (millions)",
        series=[
            plot.Series("lm", xs, [r["lm_loss"] for r in log]),
            plot.Series("answer", xs, [r.get("answer_loss", float("nan")) for r in log]),
        ],
        ymin=0.0,
        vlines=bounds,
    )
    acc_panel = plot.Panel(
        title="answer-token accuracy (train batches)",
        xlabel="tokens (millions)",
        series=[plot.Series("acc", xs, [r.get("answer_token_acc", float("nan")) for r in log])],
        ymin=0.0,
        ymax=1.0,
        vlines=bounds,
    )
    return plot.render([loss_panel, acc_panel])


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def retrieval_table(ev: dict[str, Any], ctx: str) -> str:
    r = ev["retrieval"][ctx]
    tasks_ = r["tasks"]
    depths = sorted({d for t in tasks_.values() for d in t["depths"]}, key=float)
    has_chat = any("chat_accuracy" in t for t in tasks_.values())
    head = "| task | format | " + " | ".join(f"depth {d}" for d in depths) + " | all |"
    sep = "|---|---|" + "---|" * (len(depths) + 1)
    rows = [head, sep]
    for name, t in tasks_.items():
        rows.append(f"| {name} | raw | " + " | ".join(_pct(t["depths"][d]["raw_accuracy"]) for d in depths) + f" | **{_pct(t['raw_accuracy'])}** |")
        if has_chat:
            rows.append(f"| {name} | chat | " + " | ".join(_pct(t["depths"][d]["chat_accuracy"]) for d in depths) + f" | **{_pct(t['chat_accuracy'])}** |")
    return "\n".join(rows)


def _supervision(tc: dict[str, Any]) -> str:
    """The attention-supervision terms of the loss, in words (empty when the recipe has none)."""
    parts = []
    if tc.get("copy_weight", 0) > 0:
        parts.append(
            f"{tc['copy_weight']:g} x the mean -log attention of head {tc['copy_head']} of layer "
            f"{tc['copy_layer'] % tc['model']['num_layers']} on the source token of every copied token (answer digits, repeats)"
        )
    heads = TrainConfig.from_json(tc).prev_heads  # also maps the older one-head schema
    if tc.get("prev_weight", 0) > 0 and heads:
        desc = ", ".join(f"L{l}H{h}: {k} back" for l, h, k in heads)
        parts.append(f"{tc['prev_weight']:g} x the same for offset heads that attend a fixed distance back ({desc})")
    if not parts:
        return ""
    return (" + " + "; + ".join(parts) + ". These are training signals only (the architecture is the stock Llama one): "
            "they shortcut the long plateau before a small model finds induction / retrieval heads by itself")


RETRIEVAL_TARGET = 0.9  # the project's target for full-cache retrieval at the trained context


def card(model_dir: Path, metrics: dict[str, Any], ev: dict[str, Any], notes: list[str] | None = None) -> str:
    cfg = json.loads((model_dir / "config.json").read_text())
    tc = metrics["config"]
    corpus = metrics["corpus"]
    hw = metrics["hardware"]
    files = sorted(p for p in model_dir.iterdir() if p.is_file())
    ckpt_bytes = sum(p.stat().st_size for p in files if p.name != "README.md")
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    phases = tc["phases"]
    final = metrics["final"]
    ho = ev.get("heldout", {})
    ctxs = sorted(ev["retrieval"], key=int)
    trained = str(max(p["seq_len"] for p in phases))
    total_tok = metrics["tokens"]
    dt = metrics["train_time_s"]
    at_trained = ev["retrieval"].get(trained) or ev["retrieval"][ctxs[-1]]
    per_task = {name: t["raw_accuracy"] for name, t in at_trained["tasks"].items()}
    mean_acc = sum(per_task.values()) / max(len(per_task), 1)
    reached = [k for k, v in per_task.items() if v >= RETRIEVAL_TARGET]
    missed = [k for k, v in per_task.items() if v < RETRIEVAL_TARGET]
    met = not missed
    task_list = ", ".join(f"{k} {_pct(v)}" for k, v in per_task.items())
    resumed = int(metrics.get("resumed_from_step") or 0)
    before, left = 0, resumed  # tokens trained before the resume (not part of this run's wall time)
    for p in phases:
        n = min(p["steps"], left)
        before, left = before + n * p["seq_len"] * p["batch"], left - n
    d = tc["data"]
    mix = ", ".join(f"{k} {w:g}" for k, w in d["task_weights"])

    lines = [
        "# tappa-mini",
        "",
        "The small **bundled default model** of tappa-local: a `LlamaForCausalLM` trained from scratch on this",
        "kind of machine (CPU only, nothing downloaded) on the Python standard library's source mixed with",
        "synthetic long-range retrieval tasks, so that it has both local heads and retrieval-like heads and a",
        f"real perplexity; trained context {trained} tokens. It is meant for tests, demos and KV-cache-compression",
        "benchmarks, not as a useful assistant: it knows Python-stdlib-flavoured text, nothing else.",
        "",
        f"**Full-cache retrieval at {at_trained['ctx']} tokens (its trained context): {task_list} (mean {_pct(mean_acc)}). "
        + (f"The project's target ({_pct(RETRIEVAL_TARGET)}) is met on every task.**" if met else
           f"The project's target ({_pct(RETRIEVAL_TARGET)}) is met on {', '.join(reached) or 'no task'}, "
           f"NOT on {', '.join(missed)}** — see Limitations."),
        "",
        "## Architecture",
        "",
        "| | |",
        "|---|---|",
        "| class | `LlamaForCausalLM` (transformers), converts to GGUF arch `llama` |",
        f"| layers | {cfg['num_hidden_layers']} |",
        f"| hidden size | {cfg['hidden_size']} |",
        f"| attention | {cfg['num_attention_heads']} query heads, {cfg['num_key_value_heads']} KV heads (GQA), head dim {head_dim} |",
        f"| MLP | SwiGLU, intermediate size {cfg['intermediate_size']} |",
        f"| positions | RoPE, theta {cfg.get('rope_theta', (cfg.get('rope_parameters') or {}).get('rope_theta'))}, `max_position_embeddings` {cfg['max_position_embeddings']} (trained at {trained}) |",
        f"| vocabulary | {cfg['vocab_size']} (SentencePiece BPE, see below); embeddings {'tied' if cfg.get('tie_word_embeddings') else 'untied'} |",
        f"| parameters | {metrics['params']:,} ({metrics['params_non_embedding']:,} without embeddings / LM head) |",
        f"| weights | {cfg.get('dtype', cfg.get('torch_dtype'))} safetensors; checkpoint {ckpt_bytes / 1e6:.1f} MB on disk (all files) |",
        "",
        "## Data",
        "",
        f"* **Text**: every `.py` file of the local Python standard library (`sysconfig.get_paths()['stdlib']`, here CPython "
        f"{corpus['python']}), excluding test suites, `site-packages`, `encodings/` and `ensurepip/` (see `tappa_local/tasks.py`).",
        f"  Training split: {corpus['train_files']} files, {corpus['train_chars']:,} characters, {corpus['train_tokens']:,} tokens; "
        f"sha256 `{corpus['train_sha256']}`.",
        f"* **Held out** (never trained on, used for perplexity and as the filler of the evaluation prompts): "
        f"{', '.join('`' + p + '`' for p in corpus['heldout_paths'])} - {corpus['heldout_files']} files, "
        f"{corpus['heldout_chars']:,} characters; sha256 `{corpus['heldout_sha256']}`.",
        "  (The digests are over the relative paths and contents, `tappa_local.tasks.documents_sha256`; another Python",
        "  version has other files and so other digests.)",
        f"* **Mixture** (per sequence): {_pct(d['p_lm'])} plain language-model windows of the training split; "
        f"{_pct(d['p_repeat'])} `A B A` windows (a stretch of corpus text, other text, the first stretch again); "
        f"{_pct(d.get('p_random_repeat', 0))} random repeats (stretches of the {d.get('random_repeat_alphabet', 0)} most frequent "
        "pieces, each followed later by an exact copy - these grow induction heads); the rest",
        f"  synthetic retrieval tasks from `tappa_local/tasks.py` with training-split filler ({mix}); raw `kv` / `var` samples ask "
        f"up to {d.get('max_extra_queries', 0)} further questions after the first answer:",
        "  * `passkey` - \"The pass key is 48213. Remember it. 48213 is the pass key.\" buried in source text, question at the end;",
        "  * `kv` - a context made of `word-word: 58213` lines, one key asked;",
        "  * `var` - `name = 4821` lines inserted into source code with distractors, ending in `print(name)  # ->`.",
        "  Depth uniform in [0, 1] (plus 10% exactly at the ends), 3-7 / 3-6 / 2-6 digit values. "
        f"{_pct(d['p_chat'])} of the task sequences are in the chat format below ({_pct(d['p_system'])} of those with a system message).",
        f"  Loss: mean token cross-entropy + {tc['answer_weight']:g} x mean cross-entropy of the answer tokens"
        + _supervision(tc) + ".",
        "",
        "## Tokenizer",
        "",
        f"SentencePiece BPE, {cfg['vocab_size']} pieces, trained on the first {d['tokenizer_max_lines']:,} non-empty lines of the training split",
        "(`tappa_local.localmodels.train_sentencepiece`): byte fallback, identity normalisation, whitespace kept, digits split,",
        "no dummy prefix (`add_prefix_space: false`, so transformers and llama.cpp agree, also around special tokens).",
        f"Specials: `<unk>`=0, `<s>`=1 (BOS), `</s>`=2 (EOS); chat markers {', '.join('`' + m + '`' for m in chat.MARKERS)} are single tokens (ids 3-6).",
        "",
        "## Chat format",
        "",
        "`tokenizer_config.json` carries a Jinja `chat_template` (llama.cpp's converter copies it to `tokenizer.chat_template`):",
        "",
        "```",
        chat.render([{"role": "system", "content": "{system}"}, {"role": "user", "content": "{question}"},
                     {"role": "assistant", "content": "{answer}"}], add_generation_prompt=False).rstrip("\n"),
        "```",
        "",
        "The assistant turn ends with the EOS token `</s>`, so generation stops there. Only system, user and assistant roles;",
        "only single-turn retrieval questions were trained.",
        "",
        "## Training",
        "",
        "| phase | context | batch | steps | tokens |",
        "|---|---|---|---|---|",
        *[f"| {i} | {p['seq_len']} | {p['batch']} | {p['steps']} | {p['seq_len'] * p['batch'] * p['steps']:,} |" for i, p in enumerate(phases)],
        "",
        f"* {metrics['steps']} steps, {total_tok:,} tokens, AdamW (betas {tuple(tc['betas'])}, weight decay {tc['weight_decay']}), "
        f"peak LR {tc['lr']:g} with {tc['warmup_steps']} warmup steps and cosine decay to {tc['min_lr_ratio']:g}x, grad clip {tc['grad_clip']}, "
        f"fp32, seed {tc['seed']}"
        + (f"; this schedule (warmup and decay) restarted at step {tc['schedule_origin']}." if tc.get("schedule_origin") else "."),
        f"* Wall time {metrics['wall_time_s'] / 60:.1f} min (training loop {dt / 60:.1f} min, {(total_tok - before) / dt:,.0f} tokens/s on average) on "
        f"{hw['cpu']} with {hw['threads']} torch threads ({hw['device']}), torch {hw['torch']}; the machine's 2 cores were shared with other work."
        + (f" This run resumed at step {resumed} from a saved state, so the wall time covers steps {resumed}-{metrics['steps']} only." if resumed else ""),
        *[f"* {n}" for n in (notes or [])],
        f"* Final training batch average: loss {final.get('loss', float('nan')):.3f}, LM loss {final.get('lm_loss', float('nan')):.3f}, "
        f"answer loss {final.get('answer_loss', float('nan')):.3f}, answer-token accuracy {final.get('answer_token_acc', float('nan')):.3f}.",
        "",
        "![training loss](loss.png)",
        "",
        "Raw per-step log: `train_metrics.json`; evaluation results (with example outputs): `eval.json`.",
        "",
        "## Evaluation",
        "",
    ]
    if ho:
        lines += [
            f"**Held-out perplexity** (transformers, fp16 weights computed in fp32): **{ho['perplexity']:.2f}** per token "
            f"({ho['bits_per_char']:.3f} bits/char) over {ho['tokens']:,} tokens in {ho['windows']} non-overlapping "
            f"{ho['ctx']}-token windows of the held-out files.",
            "",
        ]
    for ctx in ctxs:
        r = ev["retrieval"][ctx]
        tag = " (the trained context)" if ctx == trained else (" (beyond the trained context)" if int(ctx) > int(trained) else "")
        lines += [
            f"**Retrieval through llama.cpp, full KV cache, n_ctx {ctx}{tag}**: GGUF f16 from the pinned converter, greedy; "
            f"prompts of {r['prompt_tokens']} tokens from `tappa_local.tasks.suite(seed={r['seed']})`, {r['n_per_depth']} per task and depth. "
            "`raw`: completion of the prompt, correct when the first number generated equals the answer. `chat`: the same "
            "document and question as one user turn through `create_chat_completion`, correct when the reply is exactly "
            "the answer and ends with EOS.",
            "",
            retrieval_table(ev, ctx),
            "",
        ]
    lines += [
        f"The converted GGUF ({ev['gguf']['bytes'] / 1e6:.1f} MB) has sha256 `{ev['gguf']['sha256']}`; llama.cpp: tappa build "
        f"`{ev['llama_cpp']['tappa_version']}` (llama-cpp-python {ev['llama_cpp']['llama_cpp_python']}).",
        "",
        "## Use",
        "",
        "```python",
        "from tappa_local import native",
        "from tappa_local.localmodels import convert_hf_to_gguf",
        "from tappa_local import tasks",
        "",
        'gguf = convert_hf_to_gguf(Path("tappa_local/assets/tappa-mini"), Path("/tmp/tappa-mini-f16.gguf"), outtype="f16")',
        f"llm = native.load().Llama(model_path=str(gguf), n_ctx={trained}, verbose=False)",
        "count = lambda s: len(llm.tokenize(s.encode()))",
        f"prompt, answer = tasks.passkey({int(trained) - 16}, depth=0.5, seed=1, count_tokens=count)",
        'print(llm.create_completion(prompt, max_tokens=8, temperature=0)["choices"][0]["text"], answer)',
        "llm.close()",
        "```",
        "",
        "## Reproduce",
        "",
        "From the repository root (CPU, about an hour on 2 cores; `--device cuda` also works):",
        "",
        "```sh",
        f".venv/bin/python -m bench.train.train --run-dir ~/.cache/tappa-local/train/tappa-mini --export {model_dir}",
        f".venv/bin/python -m bench.train.evaluate --model {model_dir} --out {model_dir}/eval.json --ctx {' '.join(ctxs)}",
        f".venv/bin/python -m bench.train.card --model {model_dir}",
        "```",
        "",
        f"Recorded training command: `{metrics['command']}`; evaluation: `{ev['command']}`.",
        "Training is deterministic (fixed seeds; each batch is a function of seed and step); bit-exact results need the",
        "same CPU kind, thread count, torch and Python (the corpus is that Python's stdlib).",
        "",
        "## Limitations",
        "",
        "* Tiny and trained on ~" + f"{total_tok / 1e6:.0f}M tokens of Python source: its free-form text is stdlib-like babble.",
        ("* Retrieval works only in the trained formats (the three tasks above) and up to the trained context;" if met else
         "* Retrieval is below the target on "
         + ", ".join(f"{k} ({_pct(v)})" for k, v in per_task.items() if v < RETRIEVAL_TARGET)
         + f" at {at_trained['ctx']} tokens, full cache: an answer counts only when every digit is right, and at the end "
         f"of training the model got {_pct(final.get('answer_token_acc', float('nan')))} of answer *digits* right. "
         "More steps at long context is the obvious next step. Benchmarks on it compare KV policies by "
         "perplexity and by the tasks it does solve."),
        "* RoPE positions up to `max_position_embeddings` work mechanically but were not trained beyond " + trained + " tokens.",
        "* Chat: single-turn retrieval questions only"
        + (" (through the chat template at " + str(at_trained["ctx"]) + " tokens: "
           + ", ".join(f"{k} {_pct(t['chat_accuracy'])}" for k, t in at_trained["tasks"].items() if "chat_accuracy" in t)
           + "; the raw prompt is the reliable form)." if any("chat_accuracy" in t for t in at_trained["tasks"].values()) else "."),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.train.card",
        description="Write README.md (model card) and loss.png into a tappa-mini model directory from its "
        "train_metrics.json and eval.json.",
    )
    ap.add_argument("--model", type=Path, default=Path("tappa_local/assets/tappa-mini"))
    ap.add_argument("--note", action="append", default=[], help="an extra line for the Training section (repeatable), e.g. run history")
    args = ap.parse_args(argv)
    metrics = json.loads((args.model / "train_metrics.json").read_text())
    ev = json.loads((args.model / "eval.json").read_text())
    (args.model / "loss.png").write_bytes(loss_png(metrics))
    (args.model / "README.md").write_text(card(args.model, metrics, ev, args.note))
    print(f"wrote {args.model / 'README.md'} and {args.model / 'loss.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
