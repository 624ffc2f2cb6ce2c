"""What rt-lora's training takes: :class:`TrainConfig`, every setting of a run, validated when it is
made (a contradiction is refused before a model is loaded), resolved for the device it runs on and
recorded in checkpoints and the adapter (rtools.model.training runs it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from ..config import ConfigError

#: How the control tokens' rows start: ``mean`` (the mean embedding row, every control token alike) or
#: ``probe`` (rtools.model.rows: a probe of the frozen base's final hidden state, the decision it makes)
INIT_ROWS = ("mean", "probe")


@dataclass(frozen=True)
class TrainConfig:
    """Everything rt-lora's training takes, validated when it is made (:class:`ConfigError`, a
    ValueError naming the field), so that a contradiction is refused before a model is loaded.

    ``out``: the directory to write. ``model``: the base model (None: the embedded default).
    ``load_4bit`` and ``gradient_checkpointing``: None means on with CUDA, off on CPU; ``device``
    None picks CUDA when there is one; ``dtype`` None (or ``auto``) as rtools.model.loading.torch_dtype
    (``cpu_bf16``: whether this CPU has bf16 units, None detects it; not saved: the dtype it resolves to is).
    The other fields are the recipe (see the module docstring).
    """

    out: str
    model: str | None = None
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    token_lr: float = 5e-3
    weight_decay: float = 0.0
    warmup: float = 0.05
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str = "all-linear"
    control_weight: float = 2.0
    decision_weight: float = 2.0
    answer_weight: float = (
        1.0  # the answer tokens' CE (plain SFT): the model learns what to say after the token
    )
    keep_weight: float = 0.0  # KL from the initial rows' decision (init_rows probe): the decision kept
    init_rows: str = (
        "mean"  # the control rows' start: mean (of the embedding rows) or probe (rtools.model.rows)
    )
    lora_layers: int | None = None  # LoRA on the top N decoder layers only (None: every layer)
    balance: bool = True
    max_answer_tokens: int | None = 128
    max_length: int = 1024
    eval_fraction: float = 0.1
    seed: int = 0
    load_4bit: bool | None = None  # None: on CUDA yes, on CPU no
    dtype: str | None = None
    gradient_checkpointing: bool | None = None  # None: on CUDA yes, on CPU no
    save_every: int = 0  # steps between checkpoints; 0 = every 10% of training
    device: str | None = None
    trust_remote_code: bool = False
    merge: bool = False
    cpu_bf16: bool | None = None
    fsdp: bool = False  # under a launcher: shard the model across the processes (FSDP) instead of DDP

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "grad_accum", "lr", "lora_r", "lora_alpha", "max_length")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}", name)
        for name in (
            "token_lr",
            "weight_decay",
            "control_weight",
            "decision_weight",
            "answer_weight",
            "keep_weight",
        ):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}", name)
        if self.init_rows not in INIT_ROWS:
            raise ConfigError(
                f"init_rows must be {' or '.join(INIT_ROWS)}, got {self.init_rows!r}", "init_rows"
            )
        if self.keep_weight > 0 and self.init_rows != "probe":
            raise ConfigError(
                "keep_weight keeps the decision the probe's rows start with: it needs init_rows='probe'",
                "keep_weight",
            )
        if self.max_steps == 0 and self.init_rows != "probe":
            raise ConfigError(
                "max_steps 0 trains nothing: it writes the rows as initialised, which only "
                "init_rows='probe' makes a scorer of (the frozen base read by a probe)",
                "max_steps",
            )
        if self.max_steps is not None and not self.max_steps >= 0:
            raise ConfigError(f"max_steps must be >= 0 (or None), got {self.max_steps!r}", "max_steps")
        for name in ("max_answer_tokens", "lora_layers"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"{name} must be positive (or None), got {v!r}", name)
        for name, hi in (("warmup", 1.0), ("lora_dropout", 1.0), ("eval_fraction", 0.5)):
            if not 0 <= getattr(self, name) <= hi:
                raise ConfigError(f"{name} must be in [0, {hi:g}], got {getattr(self, name)!r}", name)
        if self.save_every < 0:
            raise ConfigError(f"save_every must be >= 0, got {self.save_every!r}", "save_every")
        if self.dtype not in (None, "auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"dtype must be auto, fp32, bf16 or fp16, got {self.dtype!r}", "dtype")

    def resolved(self, device: str, dtype: str | None = None, model: str | None = None) -> TrainConfig:
        """This configuration as it runs on ``device``: ``load_4bit`` decided (None: on CUDA, but not
        under FSDP, which shards the bf16 base and refuses 4-bit) and ``gradient_checkpointing`` (None:
        on CUDA); and, when given, ``dtype`` (fp32, bf16 or fp16: what ``auto`` gave here) and
        ``model`` (the base model as recorded, rtools.model.loading.model_identity)."""
        cuda = device.startswith("cuda")
        return replace(
            self,
            device=device,
            load_4bit=self.load_4bit if self.load_4bit is not None else cuda and not self.fsdp,
            gradient_checkpointing=cuda
            if self.gradient_checkpointing is None
            else self.gradient_checkpointing,
            dtype=self.dtype if dtype is None else dtype,
            model=self.model if model is None else model,
        )

    def record(self, world_size: int = 1) -> dict[str, Any]:
        """The settings as checkpoints and the adapter's rtools_config.json record them (and --resume
        compares them): every field but ``cpu_bf16`` (how ``auto`` was resolved: the dtype it gave
        is recorded), and the number of processes."""
        d = asdict(self)
        del d["cpu_bf16"]
        d["world_size"] = world_size
        return d
