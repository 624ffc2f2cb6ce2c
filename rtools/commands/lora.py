"""rt-lora: LoRA / QLoRA fine-tuning that trains the control tokens and the refusal decision."""

from __future__ import annotations

import click

from ..cli import (
    common_options,
    config_from,
    entry_point,
    fail,
    in_flags,
    input_argument,
    names_fields,
    progress_bar,
    warn,
)
from ..manual.lora import HELP, MAN, OPTION_HELP  # noqa: F401 (MAN: its man page's own sections, rtools.manpage)
from ..model.train_config import TrainConfig
from ..records import STDIN_NAMES, display_name, read_records

_D = TrainConfig(out="")  # the flags' defaults are the library's defaults (one source)
#: The configuration fields the training's messages name (``max_length``, ``overwrite=True``) without
#: listing them in each error's ``fields``: written as this command's options (``--max-length``).
OPTIONS = (*TrainConfig.__dataclass_fields__, "resume", "overwrite")


@names_fields(*OPTIONS)
@click.command("rt-lora", help=HELP, short_help="train refusal tokens with LoRA / QLoRA")
@input_argument
@click.option("-o", "--out", required=True, metavar="DIR", help="Output directory (written atomically).")
@click.option(
    "--base", "-m", "--model", "model", envvar="RT_BASE_MODEL", metavar="DIR", help=OPTION_HELP["model"]
)
@click.option(
    "--token-map",
    "token_map_file",
    type=click.Path(dir_okay=False, exists=True),
    help=OPTION_HELP["token-map"],
)
@click.option(
    "--epochs",
    type=click.FloatRange(min=0, min_open=True),
    default=_D.epochs,
    show_default=True,
    help=OPTION_HELP["epochs"],
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=0),
    default=None,
    help="Stop after N optimizer steps (0 with --init-rows probe: no step, the frozen base read by the probe's rows).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=_D.batch_size,
    show_default=True,
    help=OPTION_HELP["batch-size"],
)
@click.option(
    "--grad-accum",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Micro-batches per optimizer step.",
)
@click.option("--lr", type=float, default=_D.lr, show_default=True, help="Learning rate of the LoRA weights.")
@click.option(
    "--token-lr",
    type=float,
    default=_D.token_lr,
    show_default=True,
    help="Learning rate of the control-token embedding rows.",
)
@click.option(
    "--lora-r",
    type=click.IntRange(min=1),
    default=_D.lora_r,
    show_default=True,
    help="LoRA rank: the inner dimension of each low-rank update.",
)
@click.option(
    "--lora-alpha",
    type=click.IntRange(min=1),
    default=_D.lora_alpha,
    show_default=True,
    help="LoRA scaling: each update is multiplied by alpha / r.",
)
@click.option(
    "--lora-dropout",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Dropout on the LoRA input during training.",
)
@click.option("--target-modules", default="all-linear", show_default=True, help=OPTION_HELP["target-modules"])
@click.option(
    "--control-weight",
    type=click.FloatRange(min=0),
    default=_D.control_weight,
    show_default=True,
    help=OPTION_HELP["control-weight"],
)
@click.option(
    "--decision-weight",
    type=click.FloatRange(min=0),
    default=_D.decision_weight,
    show_default=True,
    help=OPTION_HELP["decision-weight"],
)
@click.option(
    "--answer-weight",
    type=click.FloatRange(min=0),
    default=_D.answer_weight,
    show_default=True,
    help=OPTION_HELP["answer-weight"],
)
@click.option(
    "--init-rows",
    type=click.Choice(["mean", "probe"]),
    default=_D.init_rows,
    show_default=True,
    help=OPTION_HELP["init-rows"],
)
@click.option(
    "--keep-weight",
    type=click.FloatRange(min=0),
    default=_D.keep_weight,
    show_default=True,
    help=OPTION_HELP["keep-weight"],
)
@click.option(
    "--lora-layers",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help=OPTION_HELP["lora-layers"],
)
@click.option(
    "--balance/--no-balance",
    default=True,
    show_default=True,
    help="Weight refusal and respond rows so that both classes count equally.",
)
@click.option(
    "--max-answer-tokens",
    type=click.IntRange(min=1),
    default=_D.max_answer_tokens,
    show_default=True,
    help="Cut each answer to N tokens (a cut answer gets no end-of-turn).",
)
@click.option(
    "--max-length",
    type=click.IntRange(min=8),
    default=1024,
    show_default=True,
    help=OPTION_HELP["max-length"],
)
@click.option(
    "--eval-fraction",
    type=click.FloatRange(0, 0.5),
    default=_D.eval_fraction,
    show_default=True,
    help=OPTION_HELP["eval-fraction"],
)
@click.option("--seed", type=int, default=0, show_default=True, help=OPTION_HELP["seed"])
@click.option("--4bit/--no-4bit", "load_4bit", default=None, help=OPTION_HELP["4bit"])
@click.option(
    "--gradient-checkpointing/--no-gradient-checkpointing",
    default=None,
    help=OPTION_HELP["gradient-checkpointing"],
)
@click.option(
    "--save-every",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Checkpoint every N steps (0: every tenth of training).",
)
@click.option("--resume", is_flag=True, help=OPTION_HELP["resume"])
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory (atomically).")
@click.option("--merge", is_flag=True, help=OPTION_HELP["merge"])
@click.option("--fsdp", is_flag=True, help=OPTION_HELP["fsdp"])
@click.option(
    "--merge-only", metavar="ADAPTER", type=click.Path(file_okay=False), help=OPTION_HELP["merge-only"]
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--dtype",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default="auto",
    show_default=True,
    help=OPTION_HELP["dtype"],
)
@click.option("--trust-remote-code", is_flag=True, help="Allow a model directory's own Python code to run.")
# the launcher's environment (torchrun, accelerate launch): read here, the CLI boundary, and handed
# to the library; hidden, since a launcher sets them (torch.distributed.launch also passes --local-rank)
@click.option("--world-size", "world_size", envvar="WORLD_SIZE", type=int, default=1, hidden=True)
@click.option("--rank", "rank", envvar="RANK", type=int, default=0, hidden=True)
@click.option(
    "--local-rank", "--local_rank", "local_rank", envvar="LOCAL_RANK", type=int, default=0, hidden=True
)
@click.option(
    "--accelerate-use-fsdp", "use_fsdp", envvar="ACCELERATE_USE_FSDP", type=bool, default=False, hidden=True
)
@click.option(
    "--fsdp-offload-params",
    "fsdp_offload",
    envvar="FSDP_OFFLOAD_PARAMS",
    type=bool,
    default=False,
    hidden=True,
)
@click.option(
    "--fsdp-sharding-strategy", "fsdp_strategy", envvar="FSDP_SHARDING_STRATEGY", default=None, hidden=True
)
@click.option(  # accelerate's FSDP2 spelling of the strategy (true = FULL_SHARD)
    "--fsdp-reshard-after-forward",
    "fsdp_reshard",
    envvar="FSDP_RESHARD_AFTER_FORWARD",
    default=None,
    hidden=True,
)
@click.option(
    "--accelerate-use-deepspeed",
    "use_deepspeed",
    envvar="ACCELERATE_USE_DEEPSPEED",
    type=bool,
    default=False,
    hidden=True,
)
@common_options
def command(
    file,
    token_map_file,
    resume,
    overwrite,
    merge_only,
    world_size,
    rank,
    local_rank,
    use_fsdp,
    fsdp_offload,
    fsdp_strategy,
    fsdp_reshard,
    use_deepspeed,
    quiet,
    **options,  # TrainConfig's fields, by name
):
    import orjson

    from ..model import distributed
    from ..model.loading import pick_device
    from ..model.training import check_out_apart, train
    from ..tokens import TokenMap

    if merge_only is not None:
        return merge_command(merge_only, file, resume, overwrite, quiet, **options)
    check_launch(file, world_size, options["fsdp"])
    if use_deepspeed:
        raise fail(
            "accelerate launch with DeepSpeed is not supported: rt-lora trains data parallel (DDP) or "
            "sharded with torch's FSDP; launch with examples/scale/accelerate_ddp.yaml, "
            "examples/scale/accelerate_fsdp.yaml or torchrun (--fsdp to shard)"
        )
    if use_fsdp:  # accelerate launch with an FSDP configuration: rt-lora shards the model itself
        if fsdp_offload:
            raise fail(
                "FSDP with fsdp_offload_params is not supported: rt-lora keeps the shards on the "
                "processes' devices (examples/scale/accelerate_fsdp.yaml)"
            )
        other = [
            v
            for v in (fsdp_strategy, fsdp_reshard)
            if (v or "").upper() not in ("", "1", "TRUE", "FULL_SHARD")
        ]
        if other:
            raise fail(
                f"FSDP sharding strategy {other[0]} is not supported: rt-lora shards fully "
                "(FULL_SHARD: every unit's parameters gathered for its forward and backward, freed after)"
            )
        options["fsdp"] = True
    tmods = options["target_modules"]
    cfg = config_from(
        TrainConfig,
        options,
        target_modules=tmods if tmods == "all-linear" else [m.strip() for m in tmods.split(",")],
        device=None if options["device"] == "auto" else options["device"],
        dtype=None if options["dtype"] == "auto" else options["dtype"],
    )
    # before the data is read: an output that would destroy the base or the data (a usage error)
    check_out_apart(cfg.out, cfg.model, None if file in STDIN_NAMES else file)
    tm = TokenMap.read(token_map_file) if token_map_file else None
    name = display_name(file)
    records = list(read_records(file))
    if not records:
        raise fail("no training records", path=name)
    world = distributed.check_world(world_size, rank, local_rank)
    with distributed.start(world, distributed.rank_device(pick_device(cfg.device), world)):
        summary = train(
            records,
            cfg,
            name=name,
            token_map=tm,
            resume=resume,
            overwrite=overwrite,
            progress_bar=None
            if quiet
            else (lambda total, initial: progress_bar(quiet, "step", total, initial)),
            log=None if quiet else (lambda message: warn(in_flags(message, ()))),
            world=world,
        )
    if world.main:  # the other ranks of a launched run write nothing
        click.echo(orjson.dumps({"out": options["out"], **summary}).decode())


def check_launch(file: str | None, world_size: int, fsdp: bool) -> None:
    """Usage errors of a launch, before anything is read or loaded: --fsdp without a launcher (it
    would train unsharded, not what was asked; --fsdp --4bit too) and training data on stdin under a
    launcher (one stream cannot be shared by its processes). Under a launcher, --fsdp with a 4-bit
    base is refused as the base is loaded (rtools.model.training)."""
    launched = click.get_current_context().get_parameter_source("world_size") != (
        click.core.ParameterSource.DEFAULT
    )  # WORLD_SIZE is set by torchrun and accelerate launch
    if fsdp and not launched:
        raise click.UsageError(
            "--fsdp shards the model across the processes of a launcher, and this run has none "
            "(WORLD_SIZE is not set): start it with torchrun --nproc-per-node N (or accelerate launch), "
            "or drop --fsdp"
        )
    if world_size > 1 and file in STDIN_NAMES:
        raise click.UsageError(
            f"standard input cannot be shared by the {world_size} processes of the launcher (each reads "
            "the whole training data itself): give the training data as FILE"
        )


def merge_command(
    adapter, file, resume, overwrite, quiet, out, model, merge, device, dtype, trust_remote_code, **_
):
    """rt-lora --merge-only ADAPTER --out DIR: the merged model, nothing trained."""
    import orjson

    from ..model.merging import merge_adapter

    ctx = click.get_current_context()
    if ctx.get_parameter_source("file") != click.core.ParameterSource.DEFAULT:
        raise click.UsageError(f"--merge-only merges an adapter and reads no training data (got FILE {file})")
    if merge or resume:
        raise click.UsageError(f"--merge-only cannot be combined with --{'merge' if merge else 'resume'}")
    summary = merge_adapter(
        adapter,
        out,
        base=model,
        dtype=None if dtype == "auto" else dtype,
        device="cpu" if device == "auto" else device,
        overwrite=overwrite,
        trust_remote_code=trust_remote_code,
        quiet=quiet,
    )
    click.echo(orjson.dumps(summary).decode())


main = entry_point(command, "rt-lora")
