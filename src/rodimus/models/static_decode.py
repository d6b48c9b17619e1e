"""A fixed-shape decode step for Rodimus / Rodimus+ that can be captured as one CUDA graph.

Eager decoding through ``model.forward`` with a ``DynamicCache`` is host-bound: each step launches
about two thousand small kernels from Python and syncs on input checks. :class:`StaticDecoder` keeps
every piece of decoding state in preallocated buffers and advances them in place, with no
data-dependent Python control flow, no host syncs and no new state tensors inside :meth:`step`;
on CUDA the step is captured once with ``torch.cuda.CUDAGraph`` and replayed for every token.

State per layer (B = batch size):
- short-conv state [B, d_inner, d_conv - 1] float32 (the last inputs of the conv: exact copies of
  model-dtype numbers, so the conv is one batched matmul with no per-step cast);
- recurrent state [B, 1, mem_size, d_inner] float32;
- Rodimus+ only: a ring buffer of ``W//2 + 1`` key/value slots (keys after RoPE), float32 so that
  attention needs no per-step casts (the values are exact copies of model-dtype numbers). A token
  at position p lives in slot ``p % (W//2 + 1)``; the new token is written before attending, so the
  ring holds exactly the query itself and the previous W//2 tokens. Slot order does not matter to
  softmax; slots never written (or holding padding) carry a sentinel position and are masked.

The math is the layers' own (same parameters); only the shapes are fixed at T = 1. On a GPU each
step is a few hundred tiny kernels whose count sets the step time, so float32 intermediates the
layers round to the model dtype (rotated q/k, the inner mixer output, the conv output feeding the
float32 gate projection) stay float32 here; roundings before a low-precision matmul and of stored
state are kept. In float32 models this is the layers' arithmetic exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rodimus.layers.linear import plain_linear
from rodimus.ops.ddts.common import ddts_gates
from rodimus.ops.dispatch import get_op, resolve_backend

_EMPTY = -(2**40)  # position of a slot holding no visible key


class StaticDecoder:
    """Batched greedy-or-sampled decoding with fixed buffers; see the module docstring.

    ``use_cuda_graph``: None = on when the model is on CUDA. On CUDA the first ``warmup`` steps run
    eagerly (compiling kernels, initialising cuBLAS), the next one captures the graph, and every
    later step copies its ids into a static input and replays. ``fuse_qkv`` (Rodimus+) keeps a
    concatenated copy of each layer's q/k/v weights (refreshed by prefill) so one matmul replaces
    three: 2-3 fewer kernels a layer, for a copy of those weights (+14% weight memory at d_model
    2048). Parameters must stay where they are (no ``model.to(...)``) while a captured graph is in
    use. Not thread-safe.
    """

    def __init__(
        self, model, batch_size: int, *, use_cuda_graph: bool | None = None, warmup: int = 2, fuse_qkv: bool = False
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an int >= 1, got {warmup!r}")
        self.model = model.eval()
        self.config = cfg = model.config
        _check_plain_projections(model, fuse_qkv and cfg.block_type == "rodimus_plus")
        emb = model.get_input_embeddings().weight
        self.device, self.dtype = emb.device, emb.dtype
        if use_cuda_graph is None:
            use_cuda_graph = self.device.type == "cuda"
        if use_cuda_graph and self.device.type != "cuda":
            raise ValueError(f"use_cuda_graph=True needs the model on a CUDA device, it is on {self.device}")
        self.use_cuda_graph = use_cuda_graph
        self.batch_size = B = batch_size
        self.warmup = warmup
        self.vocab_size = cfg.vocab_size
        self.is_plus = cfg.block_type == "rodimus_plus"
        self.residual_in_fp32 = cfg.residual_in_fp32
        # the Triton kernels (DDTS step, gated norm, act(a)*x): the CUDA default; forced on a CPU they
        # run under the interpreter (tests)
        backend = resolve_backend(cfg.kernel_backend, self.device.type)
        self._triton = backend == "triton"
        self._gate_mul = get_op("gate_mul", backend)  # act(a) * x
        if self._triton:
            from rodimus.ops import triton as kernels

            self._kernels = kernels

        m = cfg.mixer_settings
        di, n, W = m["d_inner"], m["mem_size"], m["d_conv"]
        kw = dict(device=self.device)
        self.layers = list(model.model.layers)
        self.conv_state = [torch.zeros(B, di, W - 1, dtype=torch.float32, **kw) for _ in self.layers]
        self.rec_state = [torch.zeros(B, 1, n, di, dtype=torch.float32, **kw) for _ in self.layers]
        self.pos = torch.zeros(B, dtype=torch.long, **kw)  # position of the next token, per row
        self._ids = torch.zeros(B, 1, dtype=torch.long, **kw)
        self._logits = torch.zeros(B, cfg.vocab_size, dtype=torch.float32, **kw)
        if self.is_plus:
            attn = self.layers[0].attn
            self.window = attn.window  # previous tokens a query sees besides itself
            self.slots = S = attn.window + 1
            Hv, D = attn.num_heads_v, attn.head_dim
            self.keys = [torch.zeros(B, S, D, dtype=torch.float32, **kw) for _ in self.layers]
            self.values = [torch.zeros(B, Hv, S, D, dtype=torch.float32, **kw) for _ in self.layers]
            self.slot_pos = torch.full((B, S), _EMPTY, dtype=torch.long, **kw)
            self.inv_freq = attn.rotary.inv_freq(self.device)
            self._slot_ids = torch.arange(S, **kw)
        # float32 views of the small parameters the layers cast every call; copies only when the
        # model is in lower precision (refreshed by every prefill so they follow the weights)
        self._f32: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.p32 = [self._layer_f32(layer) for layer in self.layers]
        self.fuse_qkv = bool(fuse_qkv) and self.is_plus
        self._qkv: list[torch.Tensor] = []
        if self.fuse_qkv:
            for layer in self.layers:
                a = layer.attn
                self._qkv.append(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach())
        self.norm_f32 = self._as_f32(model.model.norm_f.weight)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._steps = 0
        self._ready = False

    # ---- parameters -------------------------------------------------------------------------------
    def _as_f32(self, p: torch.Tensor) -> torch.Tensor:
        if p.dtype == torch.float32:
            return p.detach()
        copy = p.detach().float()
        self._f32.append((copy, p))
        return copy

    def _layer_f32(self, layer) -> dict[str, torch.Tensor]:
        inner = layer.mixer.inner_mixer
        out = {
            "mixer_norm": self._as_f32(layer.mixer_norm.weight),
            "act_norm": self._as_f32(layer.mixer.act_norm.weight),
            "conv_w": self._as_f32(inner.short_conv.conv1d.weight.squeeze(1)),
            "conv_b": self._as_f32(inner.short_conv.conv1d.bias),
            "residual": self._as_f32(inner.residual_weight),
            "gate_w": self._as_f32(inner.mem_gate_proj.weight),
            "gate_b": self._as_f32(inner.mem_gate_proj.bias),
        }
        if self.is_plus:
            out["attn_norm"] = self._as_f32(layer.attn_norm.weight)
            out["ffn_norm"] = self._as_f32(layer.ffn_norm.weight)
        return out

    @torch.no_grad()
    def refresh_parameters(self) -> None:
        """Re-read the float32 copies of small parameters (done by every prefill)."""
        for copy, p in self._f32:
            copy.copy_(p.detach().reshape(copy.shape))
        for w, layer in zip(self._qkv, self.layers):
            a = layer.attn
            torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], out=w)

    # ---- prefill ----------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, start_position: int = 0
    ) -> torch.Tensor:
        """Run the model's forward on the prompt, load its cache into the static buffers, and return
        the last logits [B, vocab] (float32). ``attention_mask`` [B, T] (1 = token) allows left padding.
        ``start_position`` shifts the RoPE positions of the prompt (Rodimus+; attention is relative)."""
        B = self.batch_size
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != B:
            raise ValueError(f"input_ids must be [batch_size={B}, T], got "
                             f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)}")
        if not isinstance(start_position, int) or start_position < 0:
            raise ValueError(f"start_position must be an int >= 0, got {start_position!r}")
        T = input_ids.shape[1]
        input_ids = input_ids.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask must be [B, T] = {tuple(input_ids.shape)}, "
                                 f"got {tuple(attention_mask.shape)}")
        positions = None
        if start_position:
            positions = (start_position + torch.arange(T, device=self.device)).expand(B, T)
        out = self.model(input_ids, attention_mask=attention_mask, use_cache=True, position_ids=positions,
                         logits_to_keep=1)
        self.refresh_parameters()
        cache = out.cache
        for i, lay in enumerate(cache.layers):
            self.conv_state[i].copy_(lay.conv_states[0])
            self.rec_state[i].copy_(lay.recurrent_states[0])
        self.pos.fill_(start_position + T)
        if self.is_plus:
            self._load_window(cache, attention_mask, start_position, T)
        self._ready = True
        return out.logits[:, -1].float()

    def _load_window(self, cache, attention_mask, start: int, T: int) -> None:
        S = self.slots
        keep = min(T, self.window)
        self.slot_pos.fill_(_EMPTY)
        for keys, values in zip(self.keys, self.values, strict=True):
            keys.zero_()
            values.zero_()
        if keep == 0:
            return
        p = torch.arange(start + T - keep, start + T, device=self.device)  # positions of the kept tokens
        slot = p % S
        for i, lay in enumerate(cache.layers):
            k, v = lay.keys[:, 0, -keep:], lay.values[:, :, -keep:]  # [B, keep, D], [B, Hv, keep, D]
            self.keys[i][:, slot] = k.float()
            self.values[i][:, :, slot] = v.float()
        real = torch.ones(self.batch_size, keep, dtype=torch.bool, device=self.device)
        if attention_mask is not None:
            real = attention_mask[:, T - keep :].bool()
        self.slot_pos[:, slot] = torch.where(real, p.expand_as(real), torch.full_like(p, _EMPTY))

    # ---- step -------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """Decode one token per row: ``input_ids`` [B, 1] (or [B]) -> logits [B, vocab] float32.

        The returned tensor is a static buffer overwritten by the next step (clone it to keep it).
        ``check=False`` skips the id range check, the one host sync here (ids that come from the
        previous step's argmax need none)."""
        if not self._ready:
            raise ValueError("call prefill(...) before step(...)")
        B = self.batch_size
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            got = getattr(input_ids, "dtype", type(input_ids))
            raise ValueError(f"input_ids must be an int64/int32 tensor, got {got}")
        if tuple(input_ids.shape) not in ((B, 1), (B,)):
            raise ValueError(f"input_ids must be [batch_size={B}, 1] or [{B}], got {tuple(input_ids.shape)}")
        if check and input_ids.numel():
            lo, hi = (int(x) for x in torch.aminmax(input_ids))
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(f"input_ids must lie in [0, vocab_size={self.vocab_size}), "
                                 f"found {lo if lo < 0 else hi}")
        self._ids.copy_(input_ids.view(B, 1))
        if not self.use_cuda_graph:
            self._step_impl()
            return self._logits
        if self._graph is None:
            if self._steps < self.warmup:  # real steps on a side stream: kernel compilation, library init
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    self._step_impl()
                torch.cuda.current_stream(self.device).wait_stream(side)
                self._steps += 1
                return self._logits
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # recorded, not run: the state is untouched until replay
                self._step_impl()
            self._graph = graph
        self._graph.replay()
        self._steps += 1
        return self._logits

    def _step_impl(self) -> None:
        model = self.model
        x = F.embedding(self._ids[:, 0], model.get_input_embeddings().weight)  # [B, d_model]
        h = x.float() if self.residual_in_fp32 else x
        rope = None
        if self.is_plus:
            slot = self.pos % self.slots
            self.slot_pos.scatter_(1, slot[:, None], self.pos[:, None])
            age = self.pos[:, None] - self.slot_pos
            bias = torch.zeros(self.slot_pos.shape, dtype=torch.float32, device=self.device)
            bias = bias.masked_fill((age < 0) | (age > self.window), float("-inf"))[:, None, :]  # [B, 1, S]
            freqs = self.pos.float()[:, None] * self.inv_freq  # [B, D/2]
            cos, sin = freqs.cos(), freqs.sin()
            rope = (slot, bias, torch.cat([cos, cos], -1)[:, None], torch.cat([-sin, sin], -1)[:, None])
        for i, layer in enumerate(self.layers):
            h = self._block(i, layer, h, rope)
        norm_f = model.model.norm_f
        y = _rms(h, self.norm_f32, norm_f.eps).to(self.dtype)
        self._logits.copy_(model.lm_head(y))
        self.pos.add_(1)

    def _block(self, i: int, layer, h: torch.Tensor, rope) -> torch.Tensor:
        p = self.p32[i]
        dtype = layer.mixer_norm.weight.dtype
        r = h + self._mixer(i, layer.mixer, _rms(h, p["mixer_norm"], layer.mixer_norm.eps).to(dtype), p)
        if not self.is_plus:
            return r
        a = self._attention(i, layer.attn, _rms(r, p["attn_norm"], layer.attn_norm.eps).to(dtype), rope)
        ffn = layer.ffn
        val, gate = ffn.fc(_rms(r + a, p["ffn_norm"], layer.ffn_norm.eps).to(dtype)).split(ffn.hidden, dim=-1)
        return r + ffn.out_proj(self._gate_mul(gate, val, "silu"))

    def _mixer(self, i: int, mixer, hn: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        inner = mixer.inner_mixer
        B, di, n = self.batch_size, inner.d_inner, inner.mem_size
        x, gate = mixer.fc(hn).split(mixer.d_inner, dim=-1)  # [B, d_inner] each
        # short conv over [previous d_conv - 1 inputs, x] in float32: one batched matmul over channels
        window = torch.cat([self.conv_state[i], x[:, :, None]], dim=-1)  # float32 [B, d_inner, d_conv]
        self.conv_state[i].copy_(window[:, :, 1:])
        if B == 1:  # one batched matmul over channels (measured faster on an H200 at batch 1 only)
            Wc = window.shape[-1]
            y = torch.baddbmm(p["conv_b"].view(di, 1, 1), window.transpose(0, 1), p["conv_w"].view(di, Wc, 1))
            y = y.view(1, di)
        else:
            y = (window * p["conv_w"]).sum(-1) + p["conv_b"]
        xcf = F.silu(y)
        xc = xcf.to(x.dtype)
        u = self._gate_mul(inner.ch_gate_proj(x), x, "sigmoid")
        q, k = inner.in_proj(xc).split(n, dim=-1)
        g_pre, tau_pre = F.linear(xcf, p["gate_w"], p["gate_b"]).split(n, dim=-1)
        state = self.rec_state[i]
        scale = n**-0.5
        act = mixer.act_norm
        if self._triton:  # one kernel each for the DDTS step and for norm((o + D x') * silu(gate))
            o = self._kernels.ddts_decode_(q.view(B, 1, 1, n), k.view(B, 1, 1, n), u.view(B, 1, 1, di),
                                           g_pre.view(B, 1, 1, n), tau_pre.view(B, 1, 1, n), state, scale=scale,
                                           eps=inner.eps).view(B, di)
            y = self._kernels.gated_rms_norm_triton(o, gate, p["act_norm"], act.eps, skip_x=xcf,
                                                    skip_weight=p["residual"])
            return mixer.out_proj(y)
        # the recurrent form's one-token math, in place
        log_a, kb = ddts_gates(k, g_pre, tau_pre, inner.eps)  # [B, n] float32
        state.mul_(log_a.exp()[:, None, :, None]).add_(kb[:, None, :, None] * u.float()[:, None, None, :])
        o = torch.matmul((q.float() * scale)[:, None, None, :], state).view(B, di).to(u.dtype)
        o = torch.addcmul(o, xcf, p["residual"])  # o + x' * D in float32
        y = _rms(o * F.silu(gate.float()), p["act_norm"], act.eps).to(x.dtype)
        return mixer.out_proj(y)

    def _attention(self, i: int, attn, an: torch.Tensor, rope) -> torch.Tensor:
        slot, bias, cos2, sin2 = rope
        B, H, Hv, D = self.batch_size, attn.num_heads, attn.num_heads_v, attn.head_dim
        dtype = an.dtype
        if self.fuse_qkv:
            qkv = F.linear(an, self._qkv[i])
            qk, v = qkv[:, : (H + 1) * D].view(B, H + 1, D), qkv[:, (H + 1) * D :]
        else:
            qk = torch.cat([attn.q_proj(an), attn.k_proj(an)], dim=-1).view(B, H + 1, D)
            v = attn.v_proj(an)
        half = D // 2  # RoPE, NeoX halves: [x1, x2] * cos + [x2, x1] * [-sin, sin], in float32
        qk = torch.addcmul(qk * cos2, torch.cat([qk[..., half:], qk[..., :half]], -1), sin2)
        q, k = qk[:, :H], qk[:, H]
        keys, values = self.keys[i], self.values[i]
        keys.scatter_(1, slot.view(B, 1, 1).expand(B, 1, D), k[:, None])
        v = v.reshape(B, Hv, 1, D).float()
        values.scatter_(2, slot.view(B, 1, 1, 1).expand(B, Hv, 1, D), v)
        scores = torch.baddbmm(bias, q, keys.transpose(1, 2), alpha=D**-0.5)  # [B, H, S]
        prob = torch.softmax(scores, dim=-1)
        o = torch.matmul(prob.view(B, Hv, H // Hv, self.slots), values)  # [B, Hv, H/Hv, D]
        return attn.out_proj(o.reshape(B, H * D).to(dtype))

    # ---- convenience ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_greedy(
        self, input_ids: torch.Tensor, max_new_tokens: int, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Greedy continuation: prompt [B, T] -> [B, T + max_new_tokens] (no stop tokens)."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        ids = input_ids.to(self.device)
        if max_new_tokens == 0:
            return ids
        out = torch.empty(self.batch_size, max_new_tokens, dtype=torch.long, device=self.device)
        out[:, 0] = self.prefill(ids, attention_mask).argmax(-1)
        for t in range(1, max_new_tokens):
            out[:, t] = self.step(out[:, t - 1], check=False).argmax(-1)
        return torch.cat([ids, out], dim=1)


def _rms(x: torch.Tensor, weight32: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`rodimus.layers.norm.rms_norm` with the weight already in float32; result in float32."""
    return F.rms_norm(x.float(), (x.shape[-1],), weight32, eps)


def _check_plain_projections(model, fuse_qkv: bool) -> None:
    """The step reads the gate projections' weights (and, fused, q/k/v's) directly, so a wrapped one (an
    adapter, a quantised linear) would be skipped: refuse it rather than decode with other weights."""
    for i, layer in enumerate(model.model.layers):
        mods = {"mixer.inner_mixer.mem_gate_proj": layer.mixer.inner_mixer.mem_gate_proj}
        if fuse_qkv:
            mods.update({f"attn.{n}": getattr(layer.attn, n) for n in ("q_proj", "k_proj", "v_proj")})
        for name, mod in mods.items():
            if not plain_linear(mod, allow_bias=True):
                raise ValueError(
                    f"StaticDecoder reads layers.{i}.{name}'s weight directly, but it is a "
                    f"{type(mod).__name__} (or has hooks): merge adapters into the weights first "
                    f"(e.g. peft's merge_and_unload())" + (", or pass fuse_qkv=False" if "attn" in name else "")
                )
