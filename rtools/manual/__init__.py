"""The commands' text: one module per command module of rtools.commands, each with its ``HELP``
(the --help text, which the command passes to click), the long help of some options, and its ``MAN``
dict, the man-page text that --help does not show (FIELDS READ, OUTPUT, EXAMPLES...; see rtools.manpage).
Plain text only: importing it costs nothing."""

#: The variable that --dtype auto reads (rt-score, rt-generate, rt-lora).
CPU_BF16 = (
    "RT_CPU_BF16: 1 or 0 says whether this CPU has bf16 matrix units (AVX512-BF16 or AMX), instead of "
    "its /proc/cpuinfo flags, for --dtype auto (benchmarks and tests pin it)."
)

#: rt-score's and rt-generate's ENVIRONMENT section.
MODEL_ENVIRONMENT = (
    "RT_MODEL: the model when --model is not given. RT_BASE_MODEL: the adapter's base model when "
    "--base is not given (the variable rt-lora reads for its base; ignored for a model that is not an "
    "adapter). XDG_CACHE_HOME: where the embedded default model "
    "is cached as safetensors (default ~/.cache/rtools/models). " + CPU_BF16
)
