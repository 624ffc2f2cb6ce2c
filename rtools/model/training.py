"""rt-lora's training: LoRA / QLoRA supervised fine-tuning that learns the refusal *decision*.

What plain next-token SFT gets wrong (measured with the default model on CoCoNot; the README's
"Training that learns the decision" has the numbers): the control token is one position among ~100
answer tokens, so it receives ~1% of the gradient and the model learns the marginal rate of
refusals, not the decision (AUROC ~0.8, the model's own choice almost never refuses). The loss
here (rtools.model.objective) is, per example,

    answer_loss                                  mean CE over the answer tokens (after the token)
  + control_weight  * CE(control token)          full-vocabulary CE at the first assistant position
  + decision_weight * CE(restricted)             CE over the control tokens only (the decision)

with examples re-weighted so that refusal and respond rows count equally (``balance``), and the
new token rows trained at their own learning rate (``token_lr``). The defaults are the ones that
measured best (see bench/recipe.py and the README).

Loss is computed only on assistant tokens: the control token and the answer, never the prompt.

:func:`train` reads top to bottom as the run goes: the checks that need no model, the base model,
the examples, the trainer (peft, the loss, the optimizer), the loop, the held-out evaluation and
the adapter directory. The pieces live beside it: its settings in train_config.py, the data in
examples.py, the loss in objective.py, peft and the output in adapter.py, checkpoints in
checkpoint.py, the evaluation in evaluation.py, the processes of a launched run in distributed.py. Importing this module imports no
torch (rt-lora --help stays fast).
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..config import ConfigError
from ..files import check_apart
from ..records import atomic_directory
from ..tokens import CATEGORY, SINGLE, TokenMap
from . import distributed as dd
from .adapter import check_writable, make_peft_model, param_groups, write_adapter
from .chat import ChatEncoder
from .checkpoint import (
    CHECKPOINT_SUFFIX,
    TrainState,
    check_resume,
    load_checkpoint,
    rank_rng,
    save_checkpoint,
)
from .evaluation import evaluate
from .examples import (
    Example,
    Schedule,
    apply_balance,
    build_examples,
    data_fingerprint,
    epoch_batches,
    infer_token_map,
    numbered,
    split_eval,
)
from .identity import IdentityError, base_identity
from .identity import fingerprint as fingerprint_of
from .loading import (
    DEFAULT_MODEL,
    ModelError,
    add_control_tokens,
    is_adapter_dir,
    load_base,
    load_tokenizer,
    model_directory,
    model_identity,
    pick_device,
    read_rtools_config,
    resolve_model,
    torch_dtype,
)
from .merging import check_mergeable, write_merged
from .train_config import TrainConfig


def lr_factor(step: int, total: int, warmup: int) -> float:
    """The learning rate of optimizer step ``step`` (from 0) as a fraction of the base rate: a linear
    warm-up over ``warmup`` steps that reaches 1 at its last step ((step + 1) / warmup), then a
    linear decay to 0 at ``total``.

    Kept rather than ``transformers.get_scheduler`` because no scheduler there gives these numbers
    exactly (tests/test_schedule.py checks both claims against the installed transformers):
    ``linear`` warms up as step / warmup (its first step has rate 0), and shifting its steps by one
    then leaves the decay's denominator off by one; ``warmup_stable_decay`` with the shift (one
    stable step, linear decay over total - warmup) is the same schedule, but computes the decay as
    1 - (step - warmup) / (total - warmup), which is an ulp away from (total - step) / (total - warmup)
    on about a quarter of the steps, so a run would not reproduce the measured recipe bit for bit.
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


# ---------------------------------------------------------------------------
# What train() builds, step by step


@dataclass(frozen=True)
class Run:
    """What is known before any model is loaded (:func:`_plan`)."""

    config: TrainConfig  # as given
    settings: TrainConfig  # resolved here: device, dtype, 4-bit, gradient checkpointing, the base's name
    world: dd.World
    device: str  # this rank's
    out: str  # absolute
    ckpt: str  # out + ".checkpoint"
    spec: str  # the base model as named (rtools.model.loading.resolve_model)
    dtype: Any  # the torch dtype of the computation

    @property
    def sharded(self) -> bool:
        """FSDP: each rank holds a shard of every parameter (otherwise each holds the whole model)."""
        return self.config.fsdp and self.world.distributed

    def recorded(self) -> dict[str, Any]:
        return self.settings.record(self.world.size)


@dataclass(frozen=True)
class Base:
    """The base model's place and identity, its tokenizer and the control tokens (:func:`_load_base`)."""

    directory: str
    identity: dict[str, Any]
    tokenizer: Any
    token_map: TokenMap
    control_ids: list[int]


@dataclass(frozen=True)
class Data:
    """The examples trained on and held out, the lines skipped as too long, and their fingerprint."""

    train: list[Example]
    held_out: list[Example]
    skipped: list[int]
    fingerprint: dict[str, Any]


@dataclass
class Trainer:
    """The model being trained and what a step needs (:func:`_trainer`)."""

    model: Any  # peft around the base
    objective: Any  # DecisionLoss around the model: the whole loss in one forward
    module: Any  # what a step calls: the objective, DDP around it, or the objective sharded (FSDP)
    opt: Any
    base_lrs: list[float]  # each parameter group's rate before the schedule's factor
    control_ids: Any  # a tensor on the device
    pad_id: int
    schedule: Schedule
    init_rows: dict[str, Any] | None = None  # how a probe started the control rows (init_rows='probe')

    def release(self) -> None:
        """Drop the trained copy, so that its memory is free before a merge loads the base again."""
        self.model = self.objective = self.module = self.opt = None


class _Silent:
    """The reporter of a run that reports nothing (no ``progress_bar``)."""

    def update(self, n: int = 1, **stats: Any) -> None:
        pass

    def close(self) -> None:
        pass


def train(
    records: Iterable[Any],
    config: TrainConfig,
    name: str = "<input>",
    token_map: TokenMap | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress_bar: Callable[[int, int], Any] | None = None,
    log: Callable[[str], None] | None = None,
    world: Any = None,
) -> dict[str, Any]:
    """Train on tagged records and write ``config.out`` (the adapter directory rt-score loads).
    Returns the summary (steps, examples, tokens_per_s, the evaluation).

    ``records``: tagged records (rtools.tag's output), or ``(line, record)`` pairs so that errors name
    their line in ``name``. ``token_map``: default, inferred from the data. ``resume`` continues from
    ``config.out`` + ".checkpoint"; ``overwrite`` replaces an existing ``config.out``.
    ``progress_bar(total, initial)``, when given, returns the reporter of the run (rtools.cli.progress_bar:
    ``update(n, **stats)`` a step, ``close()``, and ``note(message)``, if it has one, as the held-out
    evaluation and the writing start and end); ``log`` receives warnings. Without either, silence.

    ``world``: this process's rank among those a launcher started (rtools.model.distributed.World,
    inside distributed.start). ``config.batch_size`` is then per process: every rank trains on its
    shard of the same global batches of ``batch_size x world.size`` examples, and the run equals one
    process with that batch size. Rank 0 alone writes (``config.out``, checkpoints) and reports
    (``progress_bar``, ``log``); every rank returns the summary.
    """
    import torch

    world = world or dd.SINGLE
    if not world.main:
        progress_bar, log = None, None
    say = log or (lambda s: None)
    records = numbered(records)

    # Everything that can be refused is refused before a model is loaded.
    run = _plan(config, world, overwrite, data=name if name and os.path.isfile(name) else None)
    saved = check_resume(run.ckpt, run.recorded()) if resume else None  # the checkpoint's fingerprint
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    base, model = _load_base(run, records, token_map, saved, quiet=progress_bar is None)
    data = _data(run, base, records, name, saved, say)
    trainer = _trainer(run, base, model, data, say)
    del model  # the trainer holds it now (and lets it go before a merge)
    if world.rank > 0:  # the same LoRA initialisation on every rank, its own dropout masks
        torch.manual_seed(config.seed * 1000003 + world.rank)
    state = _resume(run, trainer, say) if resume else TrainState()

    # The loop. An epoch's batches come from the seed and the epoch alone, so a resumed run draws
    # the same batches and continues at the one it stopped at.
    trainer.model.train()
    sched = trainer.schedule
    bar = progress_bar(sched.total, state.step) if progress_bar is not None else _Silent()
    started, tokens_before = time.perf_counter(), state.tokens
    while state.step < sched.total:
        batches = epoch_batches(data.train, sched.global_batch, config.seed, state.epoch)
        while state.batch_in_epoch < len(batches) and state.step < sched.total:
            group = batches[state.batch_in_epoch : state.batch_in_epoch + config.grad_accum]
            entry, loss, tokens = _step(run, trainer, data.train, group, state, len(batches))
            bar.update(1, epoch=entry["epoch"], loss=loss, tokens=tokens)
            if state.step < sched.total and state.step % sched.save_every == 0:
                _checkpoint(run, trainer, state, data.fingerprint)
        if state.batch_in_epoch >= len(batches):  # the epoch is done: the next one starts
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    bar.close()
    elapsed = time.perf_counter() - started

    # Held-out evaluation: under FSDP every rank takes part (and in gathering the trained weights),
    # otherwise rank 0 alone evaluates and writes while the others wait.
    ev = _evaluate(run, trainer, data, state, bar) if run.sharded or world.main else {}
    adapter_state = dd.full_trainable(trainer.model) if run.sharded else None
    if not world.main:
        dd.barrier(world)
        return {"steps": state.step, "examples": len(data.train), "rank": world.rank}
    summary = _summary(state, data, ev, trainer, state.tokens - tokens_before, elapsed)
    _write(run, base, trainer, state, summary, records, name, overwrite, adapter_state, bar)
    shutil.rmtree(run.ckpt, ignore_errors=True)  # the run is done: nothing left to resume
    dd.barrier(world)
    return summary


# ---------------------------------------------------------------------------
# train()'s steps, in the order it takes them


def check_out_apart(out: str, model: str | None, data: str | None = None) -> None:
    """ConfigError (field ``out``) when the output directory ``out`` (and its ``.checkpoint``) is,
    holds or lies inside the base model's directory ``model`` or the training data file ``data``:
    writing it would destroy what the run reads. Checked before anything is written or loaded."""
    spec = resolve_model(model)
    inputs = [("the base model", None if spec == DEFAULT_MODEL else spec), ("the training data", data)]
    for target in (out, out + CHECKPOINT_SUFFIX):
        message = check_apart(
            target, inputs, shown=f"out={out}" if target == out else f"its checkpoint {target}"
        )
        if message is not None:
            raise ConfigError(message, "out")


def _plan(config: TrainConfig, world: dd.World, overwrite: bool, data: str | None = None) -> Run:
    """The output's place, the device, the dtype and the resolved settings: what needs no model.
    ``data``: the training data file (None: not a file), which the output must not destroy."""
    import torch

    out = os.path.abspath(config.out)
    check_out_apart(config.out, config.model, data)
    if os.path.exists(out) and not overwrite:
        raise ModelError(f"{config.out} already exists (set overwrite=True to replace it)")
    if world.main:
        check_writable(config.out)
    spec = resolve_model(config.model)
    device = dd.rank_device(pick_device(config.device), world)
    dtype = torch_dtype(config.dtype, device, config.cpu_bf16)
    # bf16 on CPU: bf16 matrix products in the frozen body, fp32 LoRA, token rows, norms and loss
    dtype_name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    settings = config.resolved(device, dtype=dtype_name, model=model_identity(spec))
    return Run(config, settings, world, device, out, out + CHECKPOINT_SUFFIX, spec, dtype)


def _load_base(
    run: Run,
    records: list[tuple[int, dict[str, Any]]],
    token_map: TokenMap | None,
    saved: dict[str, Any] | None,
    quiet: bool,
) -> tuple[Base, Any]:
    """The base model with the control tokens added (and its tokenizer), after refusing an adapter
    as the base, a 4-bit base under FSDP, and a base other than the one a resumed checkpoint (its
    fingerprint ``saved``) was trained on. ``token_map`` None: inferred from the records."""
    config, spec = run.config, run.spec
    base_dir = model_directory(spec, quiet=quiet)
    if is_adapter_dir(base_dir):
        raise ModelError(
            f"{spec} is an rt-lora adapter, not a base model: train on its base model "
            f"({read_rtools_config(base_dir).get('base_model') or 'named in its adapter_config.json'})"
        )
    if run.sharded and run.settings.load_4bit:
        raise ModelError(
            "fsdp=True with a 4-bit base is not supported: bitsandbytes' 4-bit weights can be sharded "
            "only when quantized with bnb_4bit_quant_storage equal to the compute dtype, and rtools "
            "quantizes for one device; shard the bf16 base (load_4bit=False: 2 bytes a parameter over "
            f"{run.world.size} processes), or train the 4-bit base data parallel (without fsdp=True)",
            ("fsdp", "load_4bit"),
        )
    identity = _identity_of(base_dir, spec)
    if saved is not None and "base" in saved and saved["base"] != fingerprint_of(identity):
        raise ModelError(
            f"resume=True with a different base model: {spec} is not the base the checkpoint {run.ckpt} was "
            "trained on (its configuration or weights differ); resume with that base, wherever it is now, "
            "or train again without resume=True"
        )
    if config.merge:  # a base stored quantized cannot be merged into: say so before training
        check_mergeable(base_dir)
    tok = load_tokenizer(base_dir, config.trust_remote_code)
    if token_map is None:
        token_map = infer_token_map(records)
    # sharded: each rank reads the base into host memory, and FSDP moves its shards to the device
    model = load_base(
        base_dir, run.device, run.dtype, run.settings.load_4bit, config.trust_remote_code, host=run.sharded
    )
    control_ids = add_control_tokens(model, tok, token_map)
    return Base(base_dir, identity, tok, token_map, control_ids), model


def _identity_of(base_dir: str, spec: str) -> dict[str, Any]:
    """The base model's identity (rtools.model.identity), recorded with the adapter and the checkpoints."""
    try:
        return base_identity(base_dir)
    except IdentityError as e:
        raise ModelError(f"{spec}: cannot take the base model's identity: {e}") from None


def _data(
    run: Run,
    base: Base,
    records: list[tuple[int, dict[str, Any]]],
    name: str,
    saved: dict[str, Any] | None,
    say: Callable[[str], None],
) -> Data:
    """The examples: encoded, the held-out slice split off, balanced, and refused when a resumed
    checkpoint (its fingerprint ``saved``) was trained on other ones."""
    config = run.config
    encoder = ChatEncoder(base.tokenizer, base.token_map.tokens())
    examples, skipped = build_examples(
        records, encoder, base.token_map, name, config.max_answer_tokens, config.max_length
    )
    if skipped:
        shown = ", ".join(map(str, skipped[:20])) + (", ..." if len(skipped) > 20 else "")
        say(
            f"{name}: skipped {len(skipped)} of {len(records)} examples longer than max_length "
            f"{config.max_length} (prompt + control token + one answer token do not fit): lines {shown}"
        )
    if not examples:
        if skipped:
            raise ModelError(
                f"{name}: no training examples: all {len(skipped)} are longer than max_length {config.max_length}"
            )
        raise ModelError("no training examples (empty input?)")
    train_ex, eval_ex = split_eval(examples, config.eval_fraction, config.seed)
    fingerprint = {
        "data": data_fingerprint(train_ex, eval_ex),
        "examples": len(train_ex) + len(eval_ex),
        "base": fingerprint_of(base.identity),
    }
    if saved is not None and saved.get("data") != fingerprint["data"]:
        raise ModelError(
            f"resume=True with different training data: the checkpoint was trained on "
            f"{saved.get('examples', '?')} examples (sha256 {str(saved.get('data'))[:12]}), "
            f"{name} gives {fingerprint['examples']} (sha256 {fingerprint['data'][:12]}); "
            "train with the same data and settings, or again without resume=True"
        )
    if config.balance:
        apply_balance(train_ex)
        apply_balance(eval_ex)
    counts = {lab: sum(e.label == lab for e in train_ex) for lab in ("refuse", "respond")}
    if min(counts.values()) == 0:
        say(f"warning: the training rows have only one class ({counts}); the decision cannot be learned")
    return Data(train_ex, eval_ex, skipped, fingerprint)


def _init_rows(run: Run, base: Base, model: Any, data: Data, say: Callable[[str], None]) -> dict[str, Any]:
    """Start the control rows at a probe of the frozen base (rtools.model.rows): the final hidden
    state of every training prompt, one forward pass each, a multinomial probe fitted on it, its rows
    put in place; each training example keeps the decision they make (``keep_weight``'s target).
    Deterministic for the data, the base and the seed, so a resumed run recomputes the same."""
    import torch

    from .rows import FeatureStore, fit_probe_rows, prompt_features, set_control_rows

    started = time.perf_counter()
    examples = data.train
    say(f"init_rows probe: the base's hidden state at {len(examples)} training prompts")
    # prompts an earlier run on this base (same identity, dtype and device) saw are read from the cache
    store = FeatureStore(f"{fingerprint_of(base.identity)}:{run.settings.dtype}:{run.device}")
    prompts = [e.ids[: e.labels_from] for e in examples]
    h, log_z = prompt_features(
        model,
        prompts,
        run.device,
        _pad(base),
        base.control_ids,
        store,
        report=lambda m: say(f"init_rows probe: {m}"),
    )
    say("init_rows probe: fitting the probe (its L2 chosen by cross-validated AUROC)")
    fit = fit_probe_rows(
        h,
        log_z,
        [e.control for e in examples],
        [e.weight for e in examples],
        len(base.control_ids),
        run.config.seed,
    )
    set_control_rows(model, base.control_ids, fit.rows)
    logits = h.double() @ fit.rows.double().T
    for e, p in zip(examples, torch.softmax(logits, -1).tolist(), strict=True):
        e.keep = p
    info = {**fit.info(), "seconds": round(time.perf_counter() - started, 1)}
    say("init_rows probe: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    return info


def _pad(base: Base) -> int:
    pad_id = base.tokenizer.pad_token_id
    return 0 if pad_id is None else pad_id


def _trainer(run: Run, base: Base, model: Any, data: Data, say: Callable[[str], None]) -> Trainer:
    """The control rows' start (a probe of the frozen base with init_rows='probe'), peft's LoRA
    around ``model``, the loss around that, the wrapper a launched run needs, the optimizer, and the
    schedule of steps over ``data``."""
    import torch

    from .objective import DecisionLoss  # torch at import: loaded by a run, not by rt-lora --help

    config = run.config
    init_rows = _init_rows(run, base, model, data, say) if config.init_rows == "probe" else None
    model = make_peft_model(model, base.control_ids, run.settings)
    # the whole loss in one module's forward (what a DDP/FSDP wrapper would wrap)
    objective = DecisionLoss(
        model,
        base.control_ids,
        config.control_weight,
        config.decision_weight,
        config.answer_weight,
        config.keep_weight,
    )
    # DDP around the objective on several ranks: the gradients of its forward are reduced
    # or, with fsdp, the objective sharded in place (one unit per decoder layer)
    module = dd.wrap(objective, run.world, run.device, fsdp=run.sharded)
    opt = torch.optim.AdamW(
        param_groups(model, config.lr, config.token_lr, config.weight_decay), betas=(0.9, 0.999)
    )
    pad_id = base.tokenizer.pad_token_id
    return Trainer(
        model,
        objective,
        module,
        opt,
        base_lrs=[g["lr"] for g in opt.param_groups],
        control_ids=torch.tensor(base.control_ids, device=run.device),
        pad_id=0 if pad_id is None else pad_id,
        schedule=Schedule.plan(config, len(data.train), run.world.size),
        init_rows=init_rows,
    )


def _resume(run: Run, trainer: Trainer, say: Callable[[str], None]) -> TrainState:
    """The interrupted run's state: its weights, optimizer and RNG states loaded from the checkpoint,
    whose progress must be a point of this run's schedule."""
    state = load_checkpoint(run.ckpt, trainer.model, trainer.opt, trainer.schedule, rank=run.world.rank)
    say(f"resuming at step {state.step}/{trainer.schedule.total}")
    return state


def _step(
    run: Run,
    trainer: Trainer,
    examples: list[Example],
    group: list[list[int]],
    state: TrainState,
    n_batches: int,
) -> tuple[dict[str, Any], float, int]:
    """One optimizer step over the batches of ``group`` (gradient accumulation), at this step's
    learning rate; ``state`` advanced and the step's log entry appended. Returns the entry, the
    step's loss (unrounded) and the tokens it trained on (every rank's)."""
    import torch

    from .objective import batch_loss  # (torch at import, as in _trainer)

    world, device = run.world, run.device
    started = time.perf_counter()
    f = lr_factor(state.step, trainer.schedule.total, trainer.schedule.warmup)
    for g, base in zip(trainer.opt.param_groups, trainer.base_lrs, strict=True):
        g["lr"] = base * f
    loss_v, ntok = 0.0, 0
    parts_acc: dict[str, float] = {}
    for j, b in enumerate(group):
        with dd.no_sync(trainer.module, j < len(group) - 1):  # DDP reduces on the last batch only
            exs, local, totals = (
                dd.rank_batch(examples, b, world) if world.distributed else (examples, b, None)
            )
            loss, parts, nt = batch_loss(
                trainer.model,
                exs,
                local,
                trainer.control_ids,
                run.config,
                trainer.pad_id,
                device,
                trainer.module,
                totals,
            )
            # DDP averages the ranks' gradients: their shares are to be summed
            (loss * (world.size / len(group))).backward()
        vals = dd.reduce_sum([float(loss), *parts.values(), nt], world, device)
        loss_v += vals[0] / len(group)
        ntok += int(vals[-1])
        for k, v in zip(parts, vals[1:-1], strict=True):
            parts_acc[k] = parts_acc.get(k, 0.0) + v / len(group)
    torch.nn.utils.clip_grad_norm_([p for p in trainer.model.parameters() if p.requires_grad], 1.0)
    trainer.opt.step()
    trainer.opt.zero_grad(set_to_none=True)
    state.batch_in_epoch += len(group)
    state.step += 1
    state.tokens += ntok
    seconds = time.perf_counter() - started
    entry = {
        "step": state.step,
        "epoch": state.epoch + state.batch_in_epoch / n_batches,
        "loss": round(loss_v, 6),
        **{f"loss_{k}": round(v, 6) for k, v in parts_acc.items()},
        "lr": trainer.opt.param_groups[0]["lr"],
        "tokens_per_s": round(ntok / max(seconds, 1e-9), 1),
    }
    state.log.append(entry)
    return entry, loss_v, ntok


def _checkpoint(run: Run, trainer: Trainer, state: TrainState, fingerprint: dict[str, Any]) -> None:
    """Save a checkpoint: rank 0 writes it, with every rank's RNG states (dropout continues exactly
    on --resume) and, under FSDP, the weights and optimizer state every rank helped gather whole."""
    world = run.world
    rngs = dd.gather_rng(world, rank_rng(run.device)) if world.distributed else None
    whole = (dd.full_trainable(trainer.model), dd.full_optimizer_state(trainer.opt)) if run.sharded else None
    if world.main:
        save_checkpoint(
            run.ckpt,
            trainer.model,
            trainer.opt,
            state,
            run.recorded(),
            fingerprint,
            rank_rngs=rngs,
            whole=whole,
        )


def _evaluate(run: Run, trainer: Trainer, data: Data, state: TrainState, reporter: Any) -> dict[str, float]:
    """The held-out evaluation (rtools.model.evaluation), the training log's last entry: nothing
    without held-out examples. It can take minutes after the last step: ``reporter`` says when it
    starts and ends."""
    if data.held_out:
        _report(reporter, f"evaluating on {len(data.held_out)} held-out examples")
    started = time.perf_counter()
    ev = evaluate(
        trainer.model,
        data.held_out,
        trainer.control_ids,
        run.config,
        trainer.pad_id,
        run.device,
        run.config.batch_size,
        trainer.objective,
    )
    if ev:
        numbers = ", ".join(f"{k} {v:.4f}" for k, v in ev.items())
        _report(reporter, f"evaluated in {time.perf_counter() - started:.1f}s: {numbers}")
        state.log.append({"step": state.step, **{k: round(v, 6) for k, v in ev.items()}})
    return ev


def _summary(
    state: TrainState, data: Data, ev: dict[str, float], trainer: Trainer, tokens: int, seconds: float
) -> dict[str, Any]:
    """What train() returns (and rt-lora prints): the steps, the examples, the speed, the evaluation
    (and how a probe started the rows, with init_rows='probe')."""
    summary = {
        "steps": state.step,
        "examples": len(data.train),
        "eval_examples": len(data.held_out),
        "skipped_too_long": len(data.skipped),
        "skipped_lines": data.skipped,
        "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
        **ev,
    }
    if trainer.init_rows is not None:
        summary["init_rows"] = trainer.init_rows
    return summary


def _write(
    run: Run,
    base: Base,
    trainer: Trainer,
    state: TrainState,
    summary: dict[str, Any],
    records: list[tuple[int, dict[str, Any]]],
    name: str,
    overwrite: bool,
    adapter_state: dict[str, Any] | None,
    reporter: Any,
) -> None:
    """The adapter directory (rtools.model.adapter), written atomically; with ``merge``, the merged
    model inside it (rtools.model.merging). ``reporter`` says when the writing starts and ends."""
    config = {
        "base_model": run.spec if run.spec == DEFAULT_MODEL else os.path.abspath(base.directory),
        "base_identity": base.identity,
        "control_token_ids": base.control_ids,
        "token_map": base.token_map.to_dict(),
        "training": {k: v for k, v in run.recorded().items() if k != "out"},
        "summary": summary,
        "rtools_version": __version__,
    }
    what = f"{run.config.out} (and the merged model in it)" if run.config.merge else run.config.out
    _report(reporter, f"writing {what}")
    started = time.perf_counter()
    with atomic_directory(run.out, overwrite=overwrite) as tmp:
        write_adapter(
            tmp,
            trainer.model,
            base.tokenizer,
            base.token_map,
            run.spec,
            config,
            state.log,
            name,
            records,
            state_dict=adapter_state,
        )
        if run.config.merge:
            # from the adapter just written, as rt-score loads it: the base in fp32 on the CPU
            # (also after QLoRA or bf16 training), LoRA and token rows folded in (merging.py)
            trainer.release()  # the trained copy is no longer needed: free it first
            write_merged(tmp, os.path.join(tmp, "merged"), trust_remote_code=run.config.trust_remote_code)
    _report(reporter, f"wrote {run.config.out} in {time.perf_counter() - started:.1f}s")


def _report(reporter: Any, message: str) -> None:
    """A line about the run through its progress reporter, when the reporter takes one (rtools.cli's
    Progress.note prints it on stderr; -q gives no reporter)."""
    note = getattr(reporter, "note", None)
    if note is not None:
        note(message)


__all__ = ["TrainConfig", "train", "SINGLE", "CATEGORY"]
