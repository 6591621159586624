"""Analytic compute accounting for LLaVA-style models with token reduction, in two conventions.

``paper`` convention (the C2F paper's efficiency table, same as PyramidDrop's): multiply-accumulates (MACs, reported
as "TFLOPs" in units of 1e12) of the LLM decoder layers over the *visual* tokens only; per layer with ``n`` tokens,
hidden size ``d`` and FFN size ``m``: ``4nd² + 2n²d + 3ndm``. No text tokens, no GQA, no vision tower, no LM head,
no decoding. :func:`paper_table` reproduces every row of the paper's table (LLaVA-NeXT, Qwen2-7B, anyres-p144).

``full`` convention (what the harness records per sample): true FLOPs = 2 x MACs of every matrix product of every
stage: vision tower per tile, projector, Region Focus Module passes, LLM prefill over the whole sequence (text
included, GQA-correct K/V projections, gated MLP, causal attention) and decoding with a KV cache plus the LM head.
Norms, biases, activations, softmax, RoPE and embedding look-ups are left out (each is O(n·d), below 1 %).

Symbols used in the docstrings: ``n`` tokens, ``d`` LLM hidden size, ``m`` LLM FFN size, ``H`` query heads,
``G`` key/value heads, ``e`` head dim, ``V`` vocabulary, ``L`` layers, ``P`` (query, key) pairs
of attention products.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lrs_plugin.errors import ConfigError

__all__ = [
    "LMDims",
    "VisionDims",
    "QWEN2_7B",
    "CLIP_VIT_L_336",
    "load_config_dims",
    "vision_layers_used",
    "paper_layer_macs",
    "paper_llm_tflops",
    "paper_c2f_tflops",
    "uniform_tokens_per_layer",
    "fastv_keep",
    "pdrop_keeps",
    "staged_tokens_per_layer",
    "fastv_tokens_per_layer",
    "pdrop_tokens_per_layer",
    "equivalent_tokens",
    "vision_tower_flops",
    "projector_flops",
    "llm_prefill_flops",
    "llm_decode_flops",
    "focus_flops",
]


def _int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as an int, or raise :class:`ConfigError` naming ``name`` if it is not an int >= minimum."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return number


def _read(config: Any, key: str, *, required: bool = True) -> Any:
    """Read ``key`` from a transformers config or a config dict; ``None`` when absent and not required."""
    value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
    if value is None and required:
        raise ConfigError(f"config has no {key!r} (needed for FLOPs accounting); config type: {type(config).__name__}")
    return value


def _sub(config: Any, key: str) -> Any:
    """The nested ``text_config`` / ``vision_config`` of a multimodal config, else the config itself."""
    nested = _read(config, key, required=False)
    return config if nested is None else nested


def _validate(obj: Any) -> None:
    for field in fields(obj):
        _int(f"{type(obj).__name__}.{field.name}", getattr(obj, field.name))


@dataclass(frozen=True)
class LMDims:
    """Dimensions of a decoder-only LLM (Llama / Qwen2 family)."""

    num_layers: int  # decoder layers L (num_hidden_layers)
    hidden: int  # hidden size d (hidden_size)
    intermediate: int  # gated-MLP inner size m (intermediate_size)
    num_heads: int  # query heads H (num_attention_heads)
    num_kv_heads: int  # key/value heads G (num_key_value_heads; = H without GQA)
    head_dim: int  # per-head size e (head_dim, else hidden // num_heads)
    vocab: int  # LM-head rows V (vocab_size)

    def __post_init__(self) -> None:
        _validate(self)
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"LMDims.num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )

    @classmethod
    def from_config(cls, config: Any) -> LMDims:
        """Read the dimensions from a Llama/Qwen2 config, a LLaVA(-NeXT) config (its ``text_config``) or a dict."""
        config = _sub(config, "text_config")
        heads = _int("num_attention_heads", _read(config, "num_attention_heads"))
        hidden = _int("hidden_size", _read(config, "hidden_size"))
        head_dim = _read(config, "head_dim", required=False)
        if head_dim is None:
            if hidden % heads:
                raise ConfigError(f"config has no 'head_dim' and hidden_size {hidden} is not divisible by {heads}")
            head_dim = hidden // heads
        return cls(
            num_layers=_read(config, "num_hidden_layers"),
            hidden=hidden,
            intermediate=_read(config, "intermediate_size"),
            num_heads=heads,
            num_kv_heads=_read(config, "num_key_value_heads", required=False) or heads,
            head_dim=head_dim,
            vocab=_read(config, "vocab_size"),
        )


@dataclass(frozen=True)
class VisionDims:
    """Dimensions of a ViT vision tower (CLIP vision config)."""

    num_layers: int  # encoder layers (num_hidden_layers)
    hidden: int  # width h (hidden_size)
    intermediate: int  # MLP inner size i (intermediate_size; fc1 -> act -> fc2, not gated)
    patch: int  # patch side p in pixels (patch_size)
    image_size: int  # tile side in pixels (image_size); must be a multiple of patch
    num_heads: int  # attention heads (num_attention_heads); does not change the MAC count
    num_channels: int = 3  # input channels c (num_channels)

    def __post_init__(self) -> None:
        _validate(self)
        if self.image_size % self.patch:
            raise ConfigError(f"VisionDims.image_size ({self.image_size}) must be a multiple of patch ({self.patch})")

    @property
    def num_patches(self) -> int:
        """Patches per tile, ``(image_size / patch)²`` (576 for CLIP-L/14-336)."""
        return (self.image_size // self.patch) ** 2

    @classmethod
    def from_config(cls, config: Any) -> VisionDims:
        """Read the dimensions from a CLIP vision config, a LLaVA(-NeXT) config (its ``vision_config``) or a dict."""
        config = _sub(config, "vision_config")
        return cls(
            num_layers=_read(config, "num_hidden_layers"),
            hidden=_read(config, "hidden_size"),
            intermediate=_read(config, "intermediate_size"),
            patch=_read(config, "patch_size"),
            image_size=_read(config, "image_size"),
            num_heads=_read(config, "num_attention_heads"),
            num_channels=_read(config, "num_channels", required=False) or 3,
        )


#: Qwen2-7B (the LLM of the paper's efficiency table).
QWEN2_7B = LMDims(28, 3584, 18944, 28, 4, 128, 152064)
#: CLIP ViT-L/14-336 (``openai/clip-vit-large-patch14-336``), the vision tower of every LLaVA backbone here.
CLIP_VIT_L_336 = VisionDims(24, 1024, 4096, 14, 336, 16)


def load_config_dims(path: str | Path) -> tuple[LMDims, VisionDims | None]:
    """Dimensions from a ``config.json`` (or a checkpoint folder holding one).

    LLaVA / LLaVA-NeXT configs give both (``text_config``, ``vision_config``); a flat LLM config (e.g. the released
    ``llava_qwen`` checkpoints, whose vision tower is only named in ``mm_vision_tower``) gives ``(lm, None)``.

    Raises:
        ConfigError: the file is missing or not JSON, or a dimension is missing or invalid.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read model config {str(path)!r}: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"model config {str(path)!r} is not a JSON object")
    vision = VisionDims.from_config(config["vision_config"]) if config.get("vision_config") else None
    return LMDims.from_config(config), vision


def vision_layers_used(select_layer: int, num_layers: int) -> int:
    """Encoder layers that must run to produce hidden state ``select_layer`` (LLaVA's ``vision_feature_layer``).

    Hidden state 0 is the embedding output and ``k`` the output of layer ``k``; negative indices count from the end,
    so ``-2`` of 24 layers means 23 layers. (HF LLaVA still runs all layers; pass ``num_layers`` to count that.)
    """
    num_layers = _int("num_layers", num_layers)
    index = select_layer + num_layers + 1 if select_layer < 0 else select_layer
    if not 0 <= index <= num_layers:
        raise ConfigError(f"select_layer must be in [{-num_layers - 1}, {num_layers}], got {select_layer!r}")
    return index


# ---------------------------------------------------------------------------------------------- paper convention


def paper_layer_macs(n: int, dims: LMDims) -> int:
    """MACs of one decoder layer over ``n`` visual tokens: ``4nd² + 2n²d + 3ndm`` (q,k,v,o; QK and AV; gated MLP)."""
    n = _int("n", n, 0)
    d, m = dims.hidden, dims.intermediate
    return 4 * n * d * d + 2 * n * n * d + 3 * n * d * m


def _tokens(tokens_per_layer: Sequence[int], num_layers: int) -> list[int]:
    tokens = [_int(f"tokens_per_layer[{i}]", n, 0) for i, n in enumerate(tokens_per_layer)]
    if len(tokens) != num_layers:
        raise ConfigError(f"tokens_per_layer has {len(tokens)} entries, the model has {num_layers} layers")
    return tokens


def paper_llm_tflops(tokens_per_layer: Sequence[int], dims: LMDims) -> float:
    """Paper-convention LLM cost: ``Σ_l (4n_l d² + 2n_l² d + 3n_l dm) / 1e12`` with one entry per LLM layer."""
    return sum(paper_layer_macs(n, dims) for n in _tokens(tokens_per_layer, dims.num_layers)) / 1e12


def paper_c2f_tflops(
    rfm_pass_tokens: Sequence[int], rfm_layers: int, llm_tokens_per_layer: Sequence[int], dims: LMDims
) -> float:
    """Paper-convention cost of coarse-to-fine pruning: RFM passes plus the LLM pass, in units of 1e12.

    ``(rfm_layers · Σ_p f(n_p) + Σ_l f(n_l)) / 1e12`` with ``f`` = :func:`paper_layer_macs`, ``n_p`` the visual
    tokens (thumbnail + grid) seen by RFM pass ``p`` and ``n_l`` the visual tokens of LLM layer ``l``. The RFM layers
    are LLM-sized decoder layers; ``rfm_layers`` is the number counted as full layers per pass.
    """
    rfm_layers = _int("rfm_layers", rfm_layers)
    rfm = sum(paper_layer_macs(_int(f"rfm_pass_tokens[{i}]", n, 0), dims) for i, n in enumerate(rfm_pass_tokens))
    return rfm_layers * rfm / 1e12 + paper_llm_tflops(llm_tokens_per_layer, dims)


def uniform_tokens_per_layer(n: int, num_layers: int) -> list[int]:
    """``n`` tokens at every one of ``num_layers`` layers (no in-LLM pruning)."""
    return [_int("n", n, 0)] * _int("num_layers", num_layers)


def fastv_keep(num_image: int, r: float) -> int:
    """Image tokens FastV keeps of ``N``: ``round(N·(1-R))`` (FastV's ``round``), at least 1 unless ``N = 0``.

    The one FastV keep rule: the ``fastv`` reducer drops to it and :func:`fastv_tokens_per_layer` counts it.
    """
    return min(num_image, max(1, round(num_image * (1 - r))))


def pdrop_keeps(num_image: int, lam: float, num_stages: int) -> list[int]:
    """Image tokens PyramidDrop keeps after stages ``s = 1..S``: ``int(N·λ^s)`` (PDrop's ``int``), in ``[1, N]``.

    The one PDrop keep rule (see :func:`fastv_keep`); ``λ^s`` is a fraction of the *original* count ``N``.
    """
    return [_pdrop_keep(num_image, lam**s) for s in range(1, num_stages + 1)]


def _pdrop_keep(num_image: int, ratio: float) -> int:
    return min(num_image, max(1, int(num_image * ratio)))


def staged_tokens_per_layer(n: int, num_layers: int, drops: Iterable[tuple[int, int]]) -> list[int]:
    """Tokens entering each layer when ``n`` are cut to ``keep_s`` from layer ``l_s`` on (``drops``: ``(l_s, keep_s)``).

    The one per-layer layout of the in-LLM methods: layers before the first drop see ``n``; the reducers' layer
    averages (:func:`equivalent_tokens` of this) and the FLOPs schedules below read it.
    """
    tokens = [n] * num_layers
    for start, keep in drops:
        tokens[start:] = [keep] * (num_layers - start)
    return tokens


def fastv_tokens_per_layer(n: int, num_layers: int, k: int, r: float) -> list[int]:
    """FastV: layers ``0..K-1`` see ``n`` tokens, layers ``K..L-1`` keep :func:`fastv_keep` ``(n, R)``."""
    n, num_layers, k = _int("n", n, 0), _int("num_layers", num_layers), _int("FastV k", k, 0)
    if k > num_layers:
        raise ConfigError(f"FastV k must be an integer in [0, {num_layers}], got {k!r}")
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
        raise ConfigError(f"FastV r (fraction dropped) must be in [0, 1), got {r!r}")
    return staged_tokens_per_layer(n, num_layers, [(k, fastv_keep(n, r))])


def pdrop_tokens_per_layer(n: int, num_layers: int, layer_list: Sequence[int], ratios: Sequence[float]) -> list[int]:
    """PyramidDrop: stage ``s`` (layers ``[layer_list[s-1], layer_list[s])``) keeps ``int(n·ratios[s-1])`` tokens.

    Stage 0 (layers before ``layer_list[0]``) sees all ``n``; ratios are fractions of the *original* count, as in
    PDrop's ``image_token_ratio_list`` (``[7,14,21]``, ``[0.5,0.25,0.125]`` for the paper's 28-layer Qwen2), each
    kept count clipped to ``[1, n]`` as :func:`pdrop_keeps` does.
    """
    n, num_layers = _int("n", n, 0), _int("num_layers", num_layers)
    bounds = [_int(f"layer_list[{i}]", b) for i, b in enumerate(layer_list)]
    if len(bounds) != len(ratios):
        raise ConfigError(f"layer_list has {len(bounds)} entries but ratios has {len(ratios)}")
    if any(a >= b for a, b in zip(bounds, bounds[1:], strict=False)) or (bounds and bounds[-1] >= num_layers):
        raise ConfigError(f"layer_list must increase strictly within [1, {num_layers - 1}], got {list(layer_list)}")
    if any(isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < r <= 1.0 for r in ratios):
        raise ConfigError(f"PDrop ratios must be in (0, 1], got {list(ratios)}")
    return staged_tokens_per_layer(n, num_layers, zip(bounds, (_pdrop_keep(n, r) for r in ratios), strict=True))


def equivalent_tokens(tokens_per_layer: Sequence[int]) -> float:
    """Layer-averaged token count ``T_eq = Σ_l n_l / L`` (the "budget" of in-LLM methods' papers, baselines.md §1.1).

    The one definition: the in-LLM reducers' ``equivalent_vision_tokens`` and budget checks use it too.
    """
    if not tokens_per_layer:
        raise ConfigError("tokens_per_layer is empty")
    return sum(_int(f"tokens_per_layer[{i}]", n, 0) for i, n in enumerate(tokens_per_layer)) / len(tokens_per_layer)


# ----------------------------------------------------------------------------------------------- full convention


def vision_tower_flops(num_tiles: int, vdims: VisionDims, num_layers_used: int | None = None) -> int:
    """FLOPs of the ViT over ``num_tiles`` tiles: ``2 · tiles · (N·c·p²·h + L_used·(4th² + 2t²h + 2thi))``.

    ``N`` = patches per tile, ``t = N + 1`` (CLS), ``h``/``i`` width and MLP size, ``c`` channels, ``p`` patch;
    terms: patch-embedding conv, q/k/v/o projections, bidirectional QK and AV products, two-matrix MLP.
    ``num_layers_used`` (default all; see :func:`vision_layers_used`) counts only the layers actually run.
    """
    tiles = _int("num_tiles", num_tiles, 0)
    used = vdims.num_layers if num_layers_used is None else _int("num_layers_used", num_layers_used, 0)
    if used > vdims.num_layers:
        raise ConfigError(f"num_layers_used ({used}) exceeds the tower's {vdims.num_layers} layers")
    n, h, i = vdims.num_patches, vdims.hidden, vdims.intermediate
    t = n + 1
    conv = n * vdims.num_channels * vdims.patch**2 * h
    layer = 4 * t * h * h + 2 * t * t * h + 2 * t * h * i
    return 2 * tiles * (conv + used * layer)


def projector_flops(num_tokens: int, in_dim: int, out_dim: int) -> int:
    """FLOPs of LLaVA's 2-layer MLP projector (``in→out``, GELU, ``out→out``): ``2 · n · (in·out + out²)``."""
    n, a, b = _int("num_tokens", num_tokens, 0), _int("in_dim", in_dim), _int("out_dim", out_dim)
    return 2 * n * (a * b + b * b)


def _layer_macs(n: int, pairs: int, dims: LMDims) -> int:
    """MACs of one decoder layer with ``n`` query tokens and ``pairs`` (query, key) products."""
    d, e = dims.hidden, dims.head_dim
    proj = n * d * (2 * dims.num_heads * e + 2 * dims.num_kv_heads * e)  # q and o: H·e; k and v: G·e (GQA)
    return proj + 2 * dims.num_heads * e * pairs + 3 * n * d * dims.intermediate


def _pairs(n: int, causal: bool) -> int:
    return n * (n + 1) // 2 if causal else n * n


def llm_prefill_flops(
    tokens_per_layer: Sequence[int], dims: LMDims, *, causal: bool = True, lm_head_tokens: int = 1
) -> int:
    """FLOPs of the LLM prefill: ``2 · (Σ_l layer(n_l) + lm_head_tokens · dV)``.

    ``layer(n) = n·d·(2He + 2Ge) + 2He·P + 3ndm``: q and o projections (``H·e`` wide), K and V projections with
    ``G`` key/value heads (GQA-correct), QKᵀ and AV over ``P`` query-key pairs, gated MLP (gate, up, down).
    ``P = n(n+1)/2`` with ``causal=True`` (the default: only the lower triangle is needed, as flash/SDPA kernels skip
    masked blocks), ``n²`` with ``causal=False``. ``n_l`` is the whole sequence at layer ``l`` (text + vision).
    ``lm_head_tokens`` positions go through the LM head (1 in ``generate``: only the last logits are computed).
    """
    tokens = _tokens(tokens_per_layer, dims.num_layers)
    head = _int("lm_head_tokens", lm_head_tokens, 0) * dims.hidden * dims.vocab
    return 2 * (sum(_layer_macs(n, _pairs(n, causal), dims) for n in tokens) + head)


def llm_decode_flops(context_len: int | Sequence[int], new_tokens: int, dims: LMDims) -> int:
    """FLOPs of ``new_tokens`` single-token decoding steps with a KV cache, LM head included.

    Step ``j`` (0-based) at layer ``l`` attends to ``c_l + j + 1`` keys (the cache plus itself), so it costs
    ``layer(1)`` with ``P = c_l + j + 1``, plus ``dV`` for the LM head: ``2 · Σ_j (Σ_l layer_l + dV)``.
    ``context_len`` is the cached length after prefill, one int, or one per layer (in-LLM pruning shortens the cache
    of later layers). The prefill already yields the first generated token, so ``G`` answer tokens take
    ``new_tokens = G - 1`` steps.
    """
    steps = _int("new_tokens", new_tokens, 0)
    if isinstance(context_len, Sequence):
        cache = _tokens(context_len, dims.num_layers)
    else:
        cache = uniform_tokens_per_layer(context_len, dims.num_layers)
    total = 0
    for j in range(steps):
        total += sum(_layer_macs(1, c + j + 1, dims) for c in cache) + dims.hidden * dims.vocab
    return 2 * total


def focus_flops(
    seq_len: int, dims: LMDims, num_layers: int, *, num_queries: int = 1, causal: bool = True, run_last: bool = False
) -> int:
    """FLOPs of one Region Focus Module pass of ``R = num_layers`` LLM-sized decoder layers over ``seq_len`` tokens.

    Layers ``0..R-2`` run fully; layer ``R-1`` only provides the scores: its K projection for all ``n`` tokens, its
    Q projection for the ``q`` query rows and the ``q x n`` logits:
    ``2 · ((R-1)·layer(n) + nGe·d + qHe·d + qHe·n)`` with ``layer`` as in :func:`llm_prefill_flops`.
    ``run_last=True`` adds one more ``layer(n)`` (the released code also runs layer ``R-1`` and discards it).
    ``seq_len`` is the whole pass sequence (text, thumbnail, separator, grid, zero placeholders included).
    """
    n = _int("seq_len", seq_len)
    r = _int("num_layers", num_layers)
    q = _int("num_queries", num_queries)
    full_layers = r - 1 + int(run_last)
    d, e = dims.hidden, dims.head_dim
    score = n * d * dims.num_kv_heads * e + q * d * dims.num_heads * e + q * dims.num_heads * e * n
    return 2 * (full_layers * _layer_macs(n, _pairs(n, causal), dims) + score)
