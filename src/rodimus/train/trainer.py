"""The training loop: one code path for 1 CPU core, one GPU, or N ranks under torchrun (DDP / FSDP2)."""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from rodimus.data.dataset import BatchLoader, PackedDataset, val_batches
from rodimus.data.prepare import PrepareConfig, default_cache_dir, ensure_prepared, is_prepared
from rodimus.train import distributed as D
from rodimus.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rodimus.train.config import TrainConfig, to_dict
from rodimus.train.cuda_graphs import GraphedLoss
from rodimus.train.optim import build_optimizer, clip_grad_norm
from rodimus.train.report import MetricsLog, plot_losses, rng_restore, rng_snapshot


def resolve_data(cfg: TrainConfig, info: D.DistInfo, progress: bool = True) -> Path:
    """The prepared dataset folder for this run, preparing it (rank 0 only) when needed."""
    if len(cfg.data) == 1 and is_prepared(cfg.data[0]):
        return Path(cfg.data[0])
    if cfg.data:
        folder = Path(cfg.out) / "data"
        pcfg = PrepareConfig(
            out=str(folder),
            inputs=list(cfg.data),
            tokenizer=cfg.tokenizer,
            vocab_size=cfg.vocab_size,
            progress=progress,
        )
    else:  # the default corpus, cached across runs
        ver = f"{sys.version_info.major}.{sys.version_info.minor}"
        tag = "tok-" + Path(cfg.tokenizer).stem if cfg.tokenizer else f"bpe{cfg.vocab_size}"
        folder = default_cache_dir() / f"stdlib-py{ver}-{tag}"
        pcfg = PrepareConfig(out=str(folder), tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size, progress=progress)
    if info.is_main:
        if not is_prepared(folder, pcfg):
            print(f"preparing dataset in {folder} ...", flush=True)
        ensure_prepared(pcfg)
    D.barrier(info)
    return folder


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, parameters outside input/output embeddings), shared tensors counted once."""
    seen, total, emb = set(), 0, 0
    emb_ids = set()
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            emb_ids.update(id(p) for p in m.parameters(recurse=False))
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None:
        emb_ids.update(id(p) for p in out.parameters(recurse=False))
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if id(p) in emb_ids:
            emb += p.numel()
    return total, total - emb


def build_model(cfg: TrainConfig, meta: dict, device: torch.device) -> nn.Module:
    """A freshly initialised RodimusForCausalLM whose vocabulary covers the tokenizer's (multiple of 64)."""
    from rodimus import RodimusConfig, RodimusForCausalLM

    vocab = int(math.ceil(meta["vocab_size"] / 64) * 64)
    eos = int(meta["eos_id"])
    mcfg = RodimusConfig(
        **{**cfg.model, "vocab_size": vocab, "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}
    )
    with torch.device(device):
        return RodimusForCausalLM(mcfg)


def lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor, count: bool = True) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy and the number of scored tokens (labels -100 are skipped)."""
    tgt = labels[:, 1:].reshape(-1)
    loss = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tgt, ignore_index=-100, reduction="sum"
    )
    return loss, int((tgt != -100).sum()) if count else -1


class Trainer:
    """Owns the model, optimizer, data order and run folder; `fit()` trains, resumes and reports."""

    def __init__(
        self,
        cfg: TrainConfig,
        info: D.DistInfo | None = None,
        model: nn.Module | None = None,
        data_dir: str | Path | None = None,
        progress: bool = True,
    ):
        self.cfg = cfg
        self.info = info or D.DistInfo()
        self.progress = progress and self.info.is_main
        self.out = Path(cfg.out)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.data_dir = Path(data_dir) if data_dir else resolve_data(cfg, self.info, self.progress)
        self.train_ds = PackedDataset(self.data_dir, "train", cfg.seq_len)
        self.val_ds = PackedDataset(self.data_dir, "val", cfg.seq_len)
        self.meta = self.train_ds.meta
        dev = self.info.device
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and dev.type == "cuda")
        torch.manual_seed(cfg.seed)
        base = model if model is not None else build_model(cfg, self.meta, dev)
        base.to(dev)
        self.base = base
        params = inspect.signature(base.forward).parameters
        self.takes_cu_seqlens = "cu_seqlens" in params
        self.fused_loss = cfg.fused_loss and "skip_logits" in params
        if cfg.activation_checkpointing:
            # transformers >= 5 renamed gradient_checkpointing_enable; accept both spellings
            enable = getattr(base, "activation_checkpointing_enable", None)
            if enable is not None:
                enable()
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.mode = D.resolve_mode(cfg.parallel, self.info)
        self.model = D.parallelize(base, self.mode, self.info, self.bf16)
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.graphs: GraphedLoss | None = None
        if cfg.cuda_graphs:
            if cfg.activation_checkpointing:  # its recompute reads RNG state, not verified under capture
                raise ValueError("train config: cuda_graphs and activation_checkpointing cannot be combined yet")
            if dev.type != "cuda" or self.mode != "none" or cfg.compile:
                raise ValueError(
                    "train config: cuda_graphs needs a single CUDA device (no DDP/FSDP) and compile off, got "
                    f"device {dev.type}, parallel mode {self.mode}, compile {cfg.compile}"
                )
            self.graphs = GraphedLoss(base, self._loss, bf16=self.bf16, max_docs=cfg.cuda_graph_max_docs)
        self.optim, self.sched = build_optimizer(base, cfg)
        self.params = list(base.parameters())
        self.loader = BatchLoader(
            self.train_ds,
            micro_batch=cfg.micro_batch,
            grad_accum=cfg.grad_accum,
            rank=self.info.rank,
            world_size=self.info.world_size,
            seed=cfg.seed,
            reset_at_docs=self.takes_cu_seqlens,
        )
        self.val = val_batches(
            self.val_ds,
            micro_batch=cfg.micro_batch,
            max_windows=cfg.eval_windows,
            rank=self.info.rank,
            world_size=self.info.world_size,
            reset_at_docs=self.takes_cu_seqlens,
        )
        self.step = 0
        self.elapsed = 0.0
        self.metrics = MetricsLog(self.out / "metrics.jsonl")
        self.last_val: dict | None = None

    # ---- one step --------------------------------------------------------------------------------
    def _autocast(self):
        if self.bf16:
            return torch.autocast(self.info.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        """The model's tensor inputs on the device, and the number of scored tokens."""
        dev = self.info.device
        kw = {"input_ids": batch["input_ids"].to(dev, non_blocking=True)}
        if "cu_seqlens" in batch:
            kw["cu_seqlens"] = batch["cu_seqlens"].to(dev, non_blocking=True)
        labels = batch["labels"]
        count = int((labels[:, 1:] != -100).sum())  # counted on the CPU copy: no device sync
        if self.fused_loss:  # same targets as lm_loss_sum, passed pre-shifted so the model adds no masking
            kw["shift_labels"] = F.pad(labels[:, 1:], (0, 1), value=-100).to(dev, non_blocking=True)
        else:
            kw["labels"] = labels.to(dev, non_blocking=True)
        return kw, count

    def _loss(self, model: nn.Module, kw: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed next-token loss of one micro-batch (the caller picks autocast)."""
        if self.fused_loss:
            return model(**kw, use_cache=False, skip_logits=True, num_items_in_batch=1).loss
        kw = dict(kw)
        labels = kw.pop("labels")
        return lm_loss_sum(model(**kw, use_cache=False).logits, labels, count=False)[0]

    def _forward_loss(self, batch: dict[str, torch.Tensor], graphed: bool = False) -> tuple[torch.Tensor, int]:
        kw, count = self._inputs(batch)
        if graphed:
            loss = self.graphs(kw)
            if loss is not None:
                return loss, count
        with self._autocast():
            return self._loss(self.model, kw), count

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
        """Forward/backward over the micro-batches, clip, AdamW step. Returns (mean loss, grad norm)."""
        self.model.train()
        n = len(micro_batches)
        total = torch.zeros((), device=self.info.device)
        for i, mb in enumerate(micro_batches):
            sync_ctx = self.model.no_sync() if self.mode == "ddp" and i < n - 1 else contextlib.nullcontext()
            with sync_ctx:
                loss_sum, count = self._forward_loss(mb, graphed=self.graphs is not None)
                loss = loss_sum / count  # every micro-batch scores the same number of tokens
                (loss / n).backward()
            total += loss.detach() / n
        if self.cfg.grad_clip > 0:
            gnorm = clip_grad_norm(self.optim, self.params, self.cfg.grad_clip)
        else:
            gnorm = torch.zeros(())
        self.optim.step()
        self.sched.step()
        self.optim.zero_grad(set_to_none=self.graphs is None)  # GraphedLoss needs .grad zeroed in place
        if self.info.distributed:
            D.all_reduce_sum(total, self.info)
            total /= self.info.world_size
        return float(total), float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean validation loss per token over the fixed validation windows (all ranks together)."""
        self.model.eval()
        acc = torch.zeros(2, dtype=torch.float64, device=self.info.device)
        for batch in self.val:
            loss_sum, count = self._forward_loss(batch)
            acc[0] += loss_sum.double()
            acc[1] += count
        D.all_reduce_sum(acc, self.info)
        val_loss = float(acc[0] / acc[1])
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}

    # ---- checkpoints -----------------------------------------------------------------------------
    def save(self) -> None:
        model_sd, optim_sd = D.full_state(self.base, self.optim)
        rngs = D.all_gather_objects(rng_snapshot(), self.info)
        if self.info.is_main:
            state = {
                "scheduler": self.sched.state_dict(),
                "loader": self.loader.state_dict(),
                "rng": rngs,
                "elapsed_s": self.elapsed,
                "world_size": self.info.world_size,
                "config": to_dict(self.cfg),
            }
            save_checkpoint(
                self.out / "checkpoints", self.step, model_sd, optim_sd, state, keep=self.cfg.keep_checkpoints
            )
        D.barrier(self.info)

    def maybe_resume(self) -> bool:
        path = latest_checkpoint(self.out / "checkpoints")
        if path is None:
            return False
        model_sd, optim_sd, state = load_checkpoint(path)
        D.load_full_state(self.base, self.optim, model_sd, optim_sd)
        self.sched.load_state_dict(state["scheduler"])
        self.loader.load_state_dict(state["loader"])
        if state["loader"]["global_batch"] != self.loader.global_batch:
            raise ValueError(
                f"resume: checkpoint {path} used a global batch of {state['loader']['global_batch']}"
                f" windows, this launch has {self.loader.global_batch}; keep micro_batch x "
                "grad_accum x world size unchanged"
            )
        rngs = state["rng"]
        rng_restore(rngs[self.info.rank] if self.info.rank < len(rngs) else rngs[0])
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed_s", 0.0))
        if self.info.is_main:
            self.metrics.truncate_after(self.step)
            print(f"resumed from {path} (step {self.step})", flush=True)
        return True

    # ---- the run ---------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, info = self.cfg, self.info
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        D.barrier(info)
        resumed = self.maybe_resume()
        total, non_emb = count_parameters(self.base)
        tokens_per_step = self.loader.global_batch * cfg.seq_len
        if info.is_main:
            print(
                f"model: {type(self.base).__name__} ({cfg.preset}), {total / 1e6:.2f}M parameters "
                f"({non_emb / 1e6:.2f}M without embeddings); data {self.data_dir}: "
                f"{self.meta['train_tokens']:,} train tokens; {info.world_size} process(es), {self.mode}, "
                f"{'bf16' if self.bf16 else 'fp32'} on {info.device.type}; {tokens_per_step:,} tokens/step",
                flush=True,
            )
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            disable=not self.progress,
            desc="train",
            dynamic_ncols=True,
            file=sys.stdout,
        )
        last_ckpt = self.step if resumed else -1
        while self.step < cfg.max_steps:
            t0 = time.perf_counter()
            lr = self.sched.get_last_lr()[0]
            loss, gnorm = self.train_step(self.loader.next_step())
            self.step += 1
            dt = time.perf_counter() - t0
            self.elapsed += dt
            row = {
                "step": self.step,
                "loss": loss,
                "lr": lr,
                "grad_norm": gnorm,
                "tokens": self.step * tokens_per_step,
                "tok_per_s": tokens_per_step / dt,
                "elapsed_s": round(self.elapsed, 3),
            }
            if info.device.type == "cuda":  # this rank's peak (ranks are symmetric under DDP/FSDP2)
                row["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated(info.device) / 2**30, 2)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {self.step}; lower lr or check the data")
            if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                self.last_val = self.evaluate()
                row.update(self.last_val)
                if info.is_main:
                    bar.write(
                        f"step {self.step}: val_loss {self.last_val['val_loss']:.4f}, "
                        f"ppl {self.last_val['val_ppl']:.2f}"
                    )
            if info.is_main and (self.step % cfg.log_every == 0 or "val_loss" in row):
                self.metrics.append(row)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_step / dt:,.0f}")
            bar.update(1)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.max_steps:
                self.save()
                last_ckpt = self.step
        bar.close()
        if last_ckpt != self.step:  # e.g. resumed an already finished run with a smaller max_steps
            self.save()
        if self.last_val is None:
            self.last_val = self.evaluate()
        return self.finish()

    def finish(self) -> dict:
        """Write the Hugging Face folder, the loss curve, and print validation perplexity and a sample."""
        info = self.info
        final = self.out / "final"
        model_sd, _ = D.full_state(self.base, self.optim) if self.mode == "fsdp" else (None, None)
        result = dict(self.last_val or {}, step=self.step, final_dir=str(final))
        if info.is_main:
            tmp = self.out / ".final.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            if self.mode == "fsdp":
                fresh = type(self.base)(self.base.config)
                fresh.load_state_dict(model_sd)
                fresh.save_pretrained(tmp)
            else:
                self.base.save_pretrained(tmp)
            from rodimus.data.tokenizer import load_hf_tokenizer

            tok = load_hf_tokenizer(self.data_dir / "tokenizer")
            tok.save_pretrained(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            plot_losses(self.metrics.rows(), self.out / "loss.png", title=f"{self.cfg.preset}: {self.out}")
            print(
                f"validation loss {result.get('val_loss', float('nan')):.4f}, "
                f"perplexity {result.get('val_ppl', float('nan')):.2f} (step {self.step})"
            )
            print(
                f"saved model + tokenizer to {final} (load with AutoModelForCausalLM.from_pretrained); "
                f"metrics in {self.metrics.path}; loss curve {self.out / 'loss.png'}"
            )
            if self.cfg.sample_tokens > 0:
                result["sample"] = sample_text(
                    final, self.cfg.sample_prompt, self.cfg.sample_tokens, self.cfg.seed, info.device
                )
                print("sample:\n" + result["sample"], flush=True)
        D.barrier(info)
        return result


def sample_text(folder: str | Path, prompt: str, max_new_tokens: int, seed: int, device: torch.device) -> str:
    """Reload the saved folder with from_pretrained (proving it loads) and sample from it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import rodimus  # noqa: F401  (registers the Auto classes)

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).to(device).eval()
    ids = [tok.eos_token_id] + tok.encode(prompt, add_special_tokens=False)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids], device=device),
            max_new_tokens=max_new_tokens,
            do_sample=True,
            top_k=40,
            temperature=0.8,
            pad_token_id=tok.eos_token_id,
        )
    return tok.decode(out[0, 1:], skip_special_tokens=True)
