"""Bytes of activations kept for backward, per token, measured exactly and device-independently.

Counts the unique storages autograd saves during one training forward (bf16 autocast, parameters and
their autocast copies excluded) at two sequence lengths; the difference divided by the extra tokens is
the per-token activation memory, which is what the peak-memory target compares. Rodimus rows come with
the logits loss and with the trainer's chunked loss (``skip_logits``); Llama computes its loss from
logits. Rodimus models run their Triton kernels (under the interpreter on a CPU: the saved tensors are
the same as on a GPU, only slower), so the figure is the GPU training path's. Baseline: a same-size
transformers Llama (SDPA).

    python benchmarks/bench_activation_memory.py [--d-model 1024]
"""

from __future__ import annotations

import argparse
import os

import torch


def _is_weight_copy(t: torch.Tensor) -> bool:
    """An autocast copy of a parameter: a dtype cast whose input is a leaf (AccumulateGrad)."""
    fn = t.grad_fn
    if fn is None or fn.name() != "ToCopyBackward0":
        return False
    return any(type(nxt).__name__ == "AccumulateGrad" for nxt, _ in fn.next_functions if nxt is not None)


def saved_bytes(model, ids: torch.Tensor, **kw) -> int:
    """Unique non-parameter storages saved for backward by one forward under bf16 autocast, in bytes."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params and not _is_weight_copy(t):
            seen[s.data_ptr()] = s.nbytes()
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, torch.autocast(ids.device.type, dtype=torch.bfloat16):
        out = model(ids, labels=ids, **kw)
    del out
    return sum(seen.values())


def per_layer_and_rest(factory, T1: int, T2: int, vocab: int, **kw) -> tuple[float, float]:
    """Per-token bytes of one layer, and of everything else, from 1- and 2-layer models at two lengths."""
    per_tok = []
    for n_layer in (1, 2):
        torch.manual_seed(0)
        model = factory(n_layer).train()
        ids = [torch.randint(0, vocab, (1, T)) for T in (T1, T2)]
        per_tok.append((saved_bytes(model, ids[1], **kw) - saved_bytes(model, ids[0], **kw)) / (T2 - T1))
    layer = per_tok[1] - per_tok[0]
    return layer, per_tok[0] - layer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--tokens", default="40,72", help="two sequence lengths T1,T2 (avoid weight dimensions)")
    args = p.parse_args(argv)
    os.environ.setdefault("RODIMUS_KERNELS", "triton")
    from transformers import LlamaForCausalLM

    from rodimus import RodimusConfig, RodimusForCausalLM
    from rodimus.eval.baselines import llama_baseline_config
    from rodimus.train.config import preset_config

    T1, T2 = (int(x) for x in args.tokens.split(","))
    d, V = args.d_model, args.vocab
    rows = []
    for name in ("rodimus-350m", "rodimus-plus-350m"):
        m = dict(preset_config(name).model)
        m.update(d_model=d, vocab_size=V)
        layers = m.pop("n_layer")
        def factory(n, m=m):
            return RodimusForCausalLM(RodimusConfig(**m, n_layer=n))

        for skip in (False, True):  # the logits path, and the trainer's (fused_loss: skip_logits)
            label = name + (" fused loss" if skip else "")
            rows.append((label, layers, *per_layer_and_rest(factory, T1, T2, V, skip_logits=skip)))

    def llama(n):
        return LlamaForCausalLM(llama_baseline_config(d, n, 16, V, 2048, intermediate_size=2816))

    rows.append(("llama-350m (SDPA)", 22, *per_layer_and_rest(llama, T1, T2, V)))
    print(f"activation bytes saved for backward per token, d_model {d}, vocab {V}, bf16 autocast")
    print(f"{'model':30s} {'layers':>6s} {'per layer':>10s} {'rest':>9s} {'total':>9s}  (KiB per token)")
    for name, n, per_layer, rest in rows:
        total = n * per_layer + rest
        print(f"{name:30s} {n:6d} {per_layer / 1024:10.1f} {rest / 1024:9.1f} {total / 1024:9.1f}")


if __name__ == "__main__":
    main()
