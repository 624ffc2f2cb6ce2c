"""A small pure-torch forward pass of a Llama-architecture causal LM, for scoring on CPU.

rt-score needs one thing of a model: the hidden state at the last position of each prompt, then the
softmax over the vocabulary there. transformers' ``LlamaForCausalLM`` computes it through a general
machinery (attention interfaces, cache objects, mask builders, per-call rotary tables, right-padded
batches, three projections for q, k and v and two for the MLP's gate and up); this module computes
the same numbers with less of it:

* **packed tokens**: a batch's prompts are concatenated (no padding) for every matrix product, the
  norms, the rotary embedding and the MLP; only attention sees a padded layout, built by index;
* **fused projections**: q, k and v are one matrix product (their weights stacked once), the MLP's
  gate and up another;
* **a shared prefix** (the chat template's system turn) runs once and its keys and values are reused
  by every batch; the keys and values of a prefix can be kept and given back (``KV``);
* the rotary tables are built once, the way transformers builds them (the same floats);
* the vocabulary head is applied only at each prompt's last position.

It implements exactly the configurations :func:`llama_spec` accepts (``model_type`` llama, SiLU,
default rotary embedding, no biases, ``pretraining_tp`` 1); anything else is refused there, by
name, and rtools falls back to transformers. In fp32 its probabilities equal transformers' to float
rounding (tests/test_fastllama.py: tiny random models with and without tied embeddings, grouped
queries, other rope settings, compared with transformers itself).

torch is imported here at module level: import this module only where a model is run.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

#: config.json fields (after rtools.model.identity.normal_config) that do not change the forward
#: pass of a scoring model: token ids, initialisation, training-only settings.
IGNORED = frozenset(
    {
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "unk_token_id",
        "sep_token_id",
        "initializer_range",
        "attention_dropout",  # dropout is off in inference
        "max_position_embeddings",  # read as the context limit, not part of the computation
    }
)
#: fields that must have exactly these values (the default when absent is accepted too)
FIXED = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "pretraining_tp": 1,
}
REQUIRED_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
OPTIONAL_INTS = ("num_key_value_heads", "head_dim")


@dataclass(frozen=True)
class LlamaSpec:
    """The shape of a supported Llama model."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    max_position_embeddings: int | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LlamaSpec:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def llama_spec(config: dict[str, Any]) -> tuple[LlamaSpec | None, str]:
    """The spec of a model configuration this module computes exactly, or None and the reason why
    not. ``config``: config.json as rtools.model.identity.normal_config gives it (rope settings folded
    into ``rope_parameters``, nulls and serialisation-only fields dropped). Every field is checked:
    one this module does not know is a reason to refuse (transformers then runs the model)."""
    for key, want in FIXED.items():
        if key in config and config[key] != want:
            return None, f"{key} {config[key]!r} (the fast path computes {want!r} only)"
    if config.get("model_type") != "llama":
        return None, "not a Llama model (model_type)"
    for key in REQUIRED_INTS:
        if not _is_int(config.get(key)):
            return None, f"{key} missing or not a positive integer"
    for key in OPTIONAL_INTS:
        if key in config and not _is_int(config[key]):
            return None, f"{key} {config[key]!r} is not a positive integer"
    rope = config.get("rope_parameters")
    if (
        not isinstance(rope, dict)
        or set(rope) != {"rope_type", "rope_theta"}
        or rope["rope_type"] != "default"
    ):
        return None, f"rope settings {rope!r} (the fast path computes the default rotary embedding only)"
    theta = rope["rope_theta"]
    eps = config.get("rms_norm_eps", 1e-6)
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in (theta, eps)):
        return None, "rope_theta or rms_norm_eps is not a positive number"
    tie = config.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        return None, "tie_word_embeddings is not a boolean"
    known = set(FIXED) | set(REQUIRED_INTS) | set(OPTIONAL_INTS) | IGNORED
    known |= {"rope_parameters", "rms_norm_eps", "tie_word_embeddings"}
    unknown = sorted(set(config) - known)
    if unknown:
        return None, f"configuration fields the fast path does not implement: {', '.join(unknown)}"
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim", config["hidden_size"] // heads)
    if heads % kv or head_dim % 2:
        return None, "num_attention_heads not a multiple of num_key_value_heads, or an odd head_dim"
    limit = config.get("max_position_embeddings")
    return (
        LlamaSpec(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=kv,
            head_dim=head_dim,
            rms_norm_eps=float(eps),
            rope_theta=float(theta),
            tie_word_embeddings=tie,
            max_position_embeddings=limit if _is_int(limit) else None,
        ),
        "",
    )


# ------------------------------------------------------------------------------------------ weights


def tensor_shapes(spec: LlamaSpec, vocab: int) -> dict[str, tuple[int, ...]]:
    """The tensors of the fast layout (name -> shape), for a vocabulary of ``vocab`` rows."""
    d, hd = spec.hidden_size, spec.head_dim
    qkv = (spec.heads + 2 * spec.kv_heads) * hd
    shapes: dict[str, tuple[int, ...]] = {"embed": (vocab, d), "norm": (d,)}
    if not spec.tie_word_embeddings:
        shapes["head"] = (vocab, d)
    for i in range(spec.layers):
        shapes |= {
            f"layers.{i}.attn_norm": (d,),
            f"layers.{i}.qkv": (qkv, d),
            f"layers.{i}.o": (d, spec.heads * hd),
            f"layers.{i}.mlp_norm": (d,),
            f"layers.{i}.gate_up": (2 * spec.intermediate_size, d),
            f"layers.{i}.down": (d, spec.intermediate_size),
        }
    return shapes


def fast_tensors(spec: LlamaSpec, state: dict[str, Any]) -> dict[str, Any]:
    """A transformers LlamaForCausalLM state dict (``model.layers.0.self_attn.q_proj.weight``, ...)
    in the fast layout (q, k, v stacked; gate and up stacked), as fp32 tensors."""

    def get(name: str) -> Any:
        if name not in state:
            raise KeyError(f"the model has no tensor {name}")
        return state[name].detach().to(torch.float32)

    out = {"embed": get("model.embed_tokens.weight"), "norm": get("model.norm.weight")}
    if not spec.tie_word_embeddings:
        out["head"] = get("lm_head.weight")
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        out[f"layers.{i}.attn_norm"] = get(p + "input_layernorm.weight")
        out[f"layers.{i}.qkv"] = torch.cat(
            [get(p + f"self_attn.{x}_proj.weight") for x in ("q", "k", "v")], dim=0
        )
        out[f"layers.{i}.o"] = get(p + "self_attn.o_proj.weight")
        out[f"layers.{i}.mlp_norm"] = get(p + "post_attention_layernorm.weight")
        out[f"layers.{i}.gate_up"] = torch.cat(
            [get(p + f"mlp.{x}_proj.weight") for x in ("gate", "up")], dim=0
        )
        out[f"layers.{i}.down"] = get(p + "mlp.down_proj.weight")
    vocab = out["embed"].shape[0]
    for name, shape in tensor_shapes(spec, vocab).items():
        if tuple(out[name].shape) != shape:
            raise ValueError(f"tensor {name} has shape {tuple(out[name].shape)}, expected {shape}")
    return out


# ------------------------------------------------------------------------------------------ batches


@dataclass
class Layout:
    """Where each packed token of a batch lies: B prompts of ``lengths`` tokens (after a shared
    prefix of P tokens), padded to T = max(lengths) for attention only."""

    lengths: list[int]
    prefix: int
    positions: Any  # (N,) position of each packed token (the prefix counts)
    q_index: Any  # (N,) row of each packed token in a (B*T) padded layout
    k_index: Any  # (N,) row of each packed token in a (B*(P+T)) padded layout of keys
    last: Any  # (B,) packed index of each prompt's last token
    mask: Any  # (B, 1, T, P+T) bool: who attends to whom; None: one prompt, causal
    T: int

    @classmethod
    def of(cls, lengths: list[int], prefix: int = 0) -> Layout:
        B, T, P = len(lengths), max(lengths), prefix
        L = torch.tensor(lengths)
        seq = torch.repeat_interleave(torch.arange(B), L)
        starts = torch.cumsum(L, 0) - L
        within = torch.arange(int(L.sum())) - starts[seq]
        mask = None
        if B > 1 or P > 0:
            t = torch.arange(T)
            own = (t[None, :] <= t[:, None]).unsqueeze(0) & (t[None, None, :] < L[:, None, None])
            mask = torch.cat([torch.ones(B, T, P, dtype=torch.bool), own], dim=2).unsqueeze(1)
        return cls(
            lengths=list(lengths),
            prefix=P,
            positions=within + P,
            q_index=seq * T + within,
            k_index=seq * (P + T) + P + within,
            last=torch.cumsum(L, 0) - 1,
            mask=mask,
            T=T,
        )


#: keys and values of a prefix: one (k, v) pair per layer, each (kv_heads, P, head_dim)
KV = list[tuple[Any, Any]]


class FastLlama(torch.nn.Module):
    """The forward pass of a Llama causal LM over packed prompts (fp32; see the module's doc).

    ``tensors``: the fast layout (:func:`fast_tensors`, or views of a cached file). ``config``
    carries what rtools reads of a model (``max_position_embeddings``)."""

    def __init__(self, spec: LlamaSpec, tensors: dict[str, Any]):
        super().__init__()
        self.spec = spec
        self.config = SimpleNamespace(
            max_position_embeddings=spec.max_position_embeddings, model_type="llama", fast_path=True
        )

        def param(name: str) -> torch.nn.Parameter:
            return torch.nn.Parameter(tensors[name], requires_grad=False)

        self.embed = param("embed")
        self.head = param("head") if "head" in tensors else self.embed
        self.norm = param("norm")
        self.layers = []
        for i in range(spec.layers):
            names = ("attn_norm", "qkv", "o", "mlp_norm", "gate_up", "down")
            layer = torch.nn.ParameterList([param(f"layers.{i}.{n}") for n in names])
            self.layers.append(layer)
        self._layers = torch.nn.ModuleList(self.layers)  # registered: parameters() lists every weight
        self._rope: tuple[Any, Any] | None = None
        #: (ids, keys and values) of a prefix many prompts start with (see shared_prefix_kv)
        self.kept_prefix: tuple[list[int], KV] | None = None
        self.eval()

    # -- pieces ----------------------------------------------------------------------------------
    def _norm(self, x: Any, weight: Any) -> Any:
        """LlamaRMSNorm: the same operations in the same order."""
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.spec.rms_norm_eps))

    def rope_tables(self, n: int) -> tuple[Any, Any]:
        """cos and sin (n, head_dim/2) for positions 0..n-1, as LlamaRotaryEmbedding computes them."""
        if self._rope is None or self._rope[0].shape[0] < n:
            size = max(n, 256 if self._rope is None else 2 * self._rope[0].shape[0])
            dim = self.spec.head_dim
            inv_freq = 1.0 / (self.spec.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
            freqs = torch.arange(size, dtype=torch.float)[:, None] * inv_freq
            self._rope = (freqs.cos(), freqs.sin())
        return self._rope

    def _rotate(self, x: Any, cos: Any, sin: Any) -> Any:
        """x * cos + rotate_half(x) * sin on (N, heads, head_dim), cos/sin (N, 1, head_dim/2)."""
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        out = torch.empty_like(x)
        torch.sub(x1 * cos, x2 * sin, out=out[..., :half])
        torch.add(x2 * cos, x1 * sin, out=out[..., half:])
        return out

    def _attention(self, q: Any, k: Any, v: Any, layout: Layout, prefix: tuple[Any, Any] | None) -> Any:
        """Attention of the packed queries (N, H, hd) over the prefix and their own prompt's keys."""
        s = self.spec
        B, T, P = len(layout.lengths), layout.T, layout.prefix
        if layout.mask is None:  # one prompt, no prefix: plain causal attention
            out = F.scaled_dot_product_attention(
                q.transpose(0, 1).unsqueeze(0),
                k.transpose(0, 1).unsqueeze(0),
                v.transpose(0, 1).unsqueeze(0),
                is_causal=True,
                enable_gqa=s.heads != s.kv_heads,
            )
            return out[0].transpose(0, 1).reshape(q.shape[0], s.heads * s.head_dim)
        qp = q.new_zeros(B * T, s.heads, s.head_dim).index_copy_(0, layout.q_index, q)
        kp = k.new_zeros(B, P + T, s.kv_heads, s.head_dim)
        vp = v.new_zeros(B, P + T, s.kv_heads, s.head_dim)
        if P:
            kp[:, :P] = prefix[0].transpose(0, 1)
            vp[:, :P] = prefix[1].transpose(0, 1)
        kp.view(B * (P + T), s.kv_heads, s.head_dim).index_copy_(0, layout.k_index, k)
        vp.view(B * (P + T), s.kv_heads, s.head_dim).index_copy_(0, layout.k_index, v)
        out = F.scaled_dot_product_attention(
            qp.view(B, T, s.heads, s.head_dim).transpose(1, 2),
            kp.transpose(1, 2),
            vp.transpose(1, 2),
            attn_mask=layout.mask,
            enable_gqa=s.heads != s.kv_heads,
        )
        out = out.transpose(1, 2).reshape(B * T, s.heads * s.head_dim)
        return out.index_select(0, layout.q_index)

    # -- the forward pass ------------------------------------------------------------------------
    def forward(
        self, ids: Any, layout: Layout, prefix: KV | None = None, keep_kv: bool = False
    ) -> tuple[Any, KV | None]:
        """The final hidden state (normed) at each prompt's last token, (B, hidden), and with
        ``keep_kv`` the keys and values of these tokens (for one prompt: a prefix to reuse)."""
        s = self.spec
        H, KVH, hd = s.heads, s.kv_heads, s.head_dim
        cos, sin = self.rope_tables(int(layout.positions.max()) + 1)
        cos = cos.index_select(0, layout.positions).unsqueeze(1)
        sin = sin.index_select(0, layout.positions).unsqueeze(1)
        x = self.embed.index_select(0, ids)
        N = x.shape[0]
        kept: KV = []
        for i, (attn_norm, qkv_w, o_w, mlp_norm, gate_up_w, down_w) in enumerate(self.layers):
            h = self._norm(x, attn_norm)
            qkv = F.linear(h, qkv_w)
            qk = self._rotate(qkv[:, : (H + KVH) * hd].view(N, H + KVH, hd), cos, sin)
            q, k = qk[:, :H], qk[:, H:]
            v = qkv[:, (H + KVH) * hd :].view(N, KVH, hd)
            if keep_kv:
                kept.append((k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous()))
            a = self._attention(q, k, v, layout, prefix[i] if prefix else None)
            x = x + F.linear(a, o_w)
            h = self._norm(x, mlp_norm)
            gu = F.linear(h, gate_up_w)
            I = gu.shape[-1] // 2  # noqa: E741
            x = x + F.linear(F.silu(gu[:, :I]) * gu[:, I:], down_w)
        last = x.index_select(0, layout.last)
        return self._norm(last, self.norm), (kept if keep_kv else None)

    def head_logits(self, hidden: Any) -> Any:
        """The vocabulary head at these final hidden states."""
        return F.linear(hidden, self.head)

    # -- the interface rtools' scoring uses ----------------------------------------------------
    def get_output_embeddings(self) -> Any:
        return self.head_logits

    def shared_prefix_kv(self, sequences: list[list[int]], min_prefix: int = 4) -> tuple[int, KV | None]:
        """(P, keys and values) of the first P tokens of every sequence, each keeping at least one
        token of its own: from ``kept_prefix`` when every sequence starts with it, extended to the
        prefix the sequences share when there are several; (0, None) when nothing is shared."""
        from .batching import shared_prefix

        shared = shared_prefix(sequences) if len(sequences) > 1 else 0
        start, kv = 0, None
        if self.kept_prefix is not None:
            ids, kept = self.kept_prefix
            n = len(ids)
            if all(len(s) > n and s[:n] == ids for s in sequences):
                start, kv = n, kept
        if shared >= max(min_prefix, start + 1):
            return shared, self.prefix_kv(sequences[0][start:shared], kv, start)
        return start, kv

    def prefix_kv(self, ids: list[int], prefix: KV | None = None, start: int = 0) -> KV:
        """The keys and values of ``ids`` at positions start.. (after a prefix of ``start`` tokens
        whose keys and values are ``prefix``): the prefix extended by ``ids``."""
        layout = Layout.of([len(ids)], start)
        _, kv = self(torch.tensor(ids), layout, prefix, keep_kv=True)
        assert kv is not None
        if prefix:
            kv = [
                (torch.cat([pk, k], 1), torch.cat([pv, v], 1))
                for (pk, pv), (k, v) in zip(prefix, kv, strict=True)
            ]
        return kv


def control_probabilities(
    model: FastLlama,
    sequences: list[list[int]],
    control_ids: list[int],
    batch_tokens: int,
    batch_size: int | None = None,
    max_batch: int = 64,
    temperature: float = 1.0,
    share_prefix: bool = True,
    min_prefix: int = 4,
) -> list[list[float]]:
    """rtools.model.scoring.control_probabilities for a FastLlama: for each token sequence, the
    full-softmax probability of each control token at its last position.

    The prefix every sequence shares runs once (``share_prefix``; at least ``min_prefix`` tokens),
    starting from the model's ``kept_prefix`` (ids and keys/values of the chat template's system
    turn, kept with a prepared model) when every sequence starts with it. Batches are planned on
    the tokens after the prefix, ``batch_tokens`` real tokens at most (no padding is computed)."""
    from .batching import control_logprobs, plan_batches

    results: list[list[float]] = [[] for _ in sequences]
    if not sequences:
        return results
    sel = torch.tensor(control_ids)
    with torch.inference_mode():
        P, kv = 0, None
        if share_prefix:
            P, kv = model.shared_prefix_kv(sequences, min_prefix)
        lengths = [len(s) - P for s in sequences]
        for batch in plan_batches(lengths, batch_tokens, batch_size, max_batch):
            ids = torch.tensor([t for j in batch for t in sequences[j][P:]])
            h, _ = model(ids, Layout.of([lengths[j] for j in batch], P), kv)
            p = control_logprobs(model.head_logits, h, sel, temperature).exp().tolist()
            for k, j in enumerate(batch):
                results[j] = p[k]
    return results


def load_fast(directory: str, device: str, dtype: Any) -> FastLlama | None:
    """The model in ``directory`` (a plain safetensors model directory, e.g. rtools' cached merge) as a
    FastLlama, or None when the fast path does not compute it (not fp32 on CPU, a configuration
    :func:`llama_spec` refuses, weights not in one model.safetensors): the caller then loads it with
    transformers."""
    import os

    from safetensors.torch import load_file

    from .identity import IdentityError, normal_config, read_config

    if device != "cpu" or dtype != torch.float32:
        return None
    path = os.path.join(directory, "model.safetensors")
    try:
        spec, _ = llama_spec(normal_config(read_config(directory)))
    except IdentityError:
        return None
    if spec is None or not os.path.isfile(path):
        return None
    try:
        tensors = fast_tensors(spec, load_file(path))
    except (KeyError, ValueError):
        return None
    return FastLlama(spec, tensors)
