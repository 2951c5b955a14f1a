"""Command line entry point: ``staged-vlm <command>`` (also ``python -m staged_vlm_jax``).

Commands register in `COMMANDS` (name -> (help, add_arguments, run)). Expected failures — a config typo, a
missing data or model path, a workdir of another config, an incompatible checkpoint — end with one line naming
the key, file or checkpoint (exit status 2), not a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
from collections.abc import Callable, Sequence


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="local Hugging Face model directory")
    parser.add_argument("--dtype", default="bfloat16", help="parameter dtype to load with (default bfloat16)")
    parser.add_argument("--mesh", default=None, help='optional mesh as JSON, e.g. \'{"fsdp": 4, "tensor": 2}\'')


def _inspect(args: argparse.Namespace) -> int:
    """Loads a checkpoint (sharded when --mesh is given) and prints its family, config and parameter counts."""
    from flax import nnx

    from staged_vlm_jax import models
    from staged_vlm_jax.models.sharding import make_mesh

    mesh = make_mesh(json.loads(args.mesh)) if args.mesh else None
    model, cfg = models.load_hf(args.model, dtype=args.dtype, mesh=mesh)
    counts: dict[str, int] = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        counts[str(path[0])] = counts.get(str(path[0]), 0) + math.prod(variable.shape)
    print(f"model_type: {cfg.model_type}")
    print(f"config: {cfg}")
    for name, count in counts.items():
        print(f"parameters/{name}: {count:,}")
    print(f"parameters/total: {sum(counts.values()):,}")
    if mesh is not None:
        print(f"mesh: {dict(mesh.shape)}")
    return 0


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    from staged_vlm_jax.data.schema import CAPABILITIES, ON_ERROR_POLICIES
    from staged_vlm_jax.train.config import DataSpec

    commands = parser.add_subparsers(dest="data_command", required=True)
    convert = commands.add_parser("convert", help="EasyR1-schema rows + images -> TFDS data set (array_record)")
    convert.add_argument("--input", required=True, help="rows file (.jsonl, .json, .parquet, .tsv)")
    convert.add_argument("--capability", required=True, choices=CAPABILITIES, help="the rows' capability (stage)")
    convert.add_argument("--image-root", default=None, help="root of relative image paths (default: input folder)")
    convert.add_argument("--out", required=True, help="new (or empty) TFDS data_dir")
    convert.add_argument("--on-error", default="raise", choices=sorted(ON_ERROR_POLICIES), help="for bad rows")
    convert.add_argument("--shard-size", type=int, default=1024, help="most records per array_record shard")
    convert.add_argument("--model", default=None, help="a Hugging Face model directory: screen the rows as training "
                         "with its tokenizer and image processor would (control tokens, prompt lengths)")  # fmt: skip
    convert.add_argument("--max-prompt-length", type=int, default=DataSpec.max_prompt_length,
                         help="with --model: longer prompts are dropped, as training drops them")  # fmt: skip
    convert.set_defaults(data_run=_data_convert)

    names = lambda text: [name for name in text.split(",") if name]
    perception = commands.add_parser("build-perception", help="Stage-1 MCQs from image captions: generate, filter "
                                      "with models, write training rows (resumable)")  # fmt: skip
    perception.add_argument("--captions", required=True, help="JSON-lines caption file (e.g. DOCCI's descriptions)")
    perception.add_argument("--images", required=True, help="folder the captions' image paths are relative to")
    perception.add_argument("--generator", required=True, help="the MCQ writer: a Hugging Face directory or a run's "
                            "workdir (with --generator-url: the model name the endpoint serves)")  # fmt: skip
    perception.add_argument("--filters", required=True, type=names, help="comma-separated filter models (the "
                            "paper: two); an MCQ is kept if every one is wrong from the image and right "
                            "from the caption")  # fmt: skip
    perception.add_argument("--out", required=True, help="output folder; rerunning on it resumes")
    perception.add_argument("--limit", type=_data_count, default=None, help="only the first N captions")
    perception.add_argument("--batch-size", type=_data_count, default=8, help="prompts per generator call (default 8)")
    perception.add_argument("--caption-key", default="description", help="caption field (default: description)")
    perception.add_argument("--image-key", default="image_file", help="image path field (default: image_file)")
    perception.add_argument("--id-key", default="example_id", help="id field (default: example_id)")
    perception.add_argument("--chat-template", action="store_true", help="send the text prompts (generation, "
                            "caption-only) as a user turn; the paper sends them raw (no chat template)")  # fmt: skip
    perception.add_argument("--generator-url", default=None, help="an OpenAI-compatible endpoint serving --generator, "
                            "e.g. http://127.0.0.1:8000/v1 (staged-vlm serve, vLLM); asked greedily")  # fmt: skip
    perception.add_argument("--filter-urls", type=lambda text: text.split(","), default=None, help="comma-separated "
                            "endpoints of the --filters, in their order (an empty entry: a local model)")  # fmt: skip
    _data_model_arguments(perception)
    perception.set_defaults(data_run=_data_build_perception)

    rates = commands.add_parser("pass-rate", help="k sampled answers per row, graded by the reward: the predictions, "
                                "correctness and pass_rate columns (resumable, shardable)")  # fmt: skip
    rates.add_argument("--data", required=True, help="EasyR1 rows (.jsonl, .json)")
    rates.add_argument("--capability", required=True, choices=CAPABILITIES, help="the rows' capability (stage)")
    rates.add_argument("--image-root", default=None, help="root of relative image paths (default: the data's folder)")
    rates.add_argument("--model", required=True, help="a Hugging Face directory, or a run's workdir / checkpoints/")
    rates.add_argument("--out", required=True, help="output .jsonl: the rows with the three columns, image paths "
                       "as in --data (read it with the same image root); shards' part files beside it")  # fmt: skip
    rates.add_argument("--k", type=_data_count, default=16, help="samples per row (default 16)")
    rates.add_argument("--temperature", type=float, default=0.7, help="(default 0.7)")
    rates.add_argument("--top-p", type=float, default=0.9, help="(default 0.9, the official pass-rate script's)")
    rates.add_argument("--top-k", type=int, default=20, help="(default 20, the official pass-rate script's; 0: off)")
    rates.add_argument("--max-new-tokens", type=_data_count, default=1024, help="(default 1024)")
    rates.add_argument("--reward", default="math", help="the run's reward, whose accuracy grades (default: math)")
    rates.add_argument("--prompt", default="training", choices=("training", "passk"), help="training: the "
                       "row's training prompt (default); passk: the official pass-rate script's")  # fmt: skip
    rates.add_argument("--batch-size", type=_data_count, default=8, help="rows per generator call (default 8)")
    rates.add_argument("--shard", type=int, default=0, help="this process's share: rows shard::num-shards")
    rates.add_argument("--num-shards", type=_data_count, default=1, help="processes sharing the rows")
    _data_model_arguments(rates)
    rates.set_defaults(data_run=_data_pass_rate)


def _data_count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _data_model_arguments(parser: argparse.ArgumentParser) -> None:
    from staged_vlm_jax.train.config import DataSpec

    parser.add_argument("--dtype", default="bfloat16", help="parameter dtype of local models (default bfloat16)")
    parser.add_argument("--min-pixels", type=int, default=DataSpec.min_pixels, help="image size bounds of local "
                        f"models (default: training's, {DataSpec.min_pixels} to {DataSpec.max_pixels})")  # fmt: skip
    parser.add_argument("--max-pixels", type=int, default=DataSpec.max_pixels, help="see --min-pixels")


def _data_convert(args: argparse.Namespace) -> int:
    """Reads and validates the rows (every image decoded once; with --model screened as a run would screen them),
    writes them, and prints rows written and dropped with reasons (listed in OUT/data_errors.jsonl)."""
    from staged_vlm_jax.data.array_record import SPLIT, check_empty, write_array_record
    from staged_vlm_jax.data.schema import DataError, SkipCounter
    from staged_vlm_jax.data.screen import DataErrorLog, ScreenedSource
    from staged_vlm_jax.data.sources import DataSource, read_rows

    out = check_empty(args.out)  # before the (long) reading and screening
    source = DataSource(args.input, args.capability, args.image_root)
    if args.model:
        screened = _model_screen(args.model, args.max_prompt_length, args.on_error)(source)
    else:
        skipped = SkipCounter()
        rows = read_rows(source.path, capability=source.capability, image_root=source.image_root,
                         on_error=args.on_error, skipped=skipped)  # fmt: skip
        screened = ScreenedSource(source, tuple(rows), skipped.rows_seen, tuple(skipped.errors), ())
        if not screened.examples:
            raise DataError(args.input, "rows", f"no usable row ({screened.summary()})", reason="no_usable_rows")
    builder = write_array_record(screened.examples, out, shard_size=args.shard_size)
    if screened.dropped or screened.duplicates:
        log = DataErrorLog(out / "data_errors.jsonl")
        log.write(screened.dropped, "skipped")
        log.write(screened.duplicates, "kept")
    shards = builder.info.splits[SPLIT].num_shards
    print(f"wrote {len(screened.examples)} rows to {out} ({shards} shard(s)); {screened.summary()}")
    return 0


def _model_screen(model: str, max_prompt_length: int, on_error: str):
    """The `DataScreen` a run of ``model`` uses with the default data settings, images decoded too."""
    from staged_vlm_jax.data.images import image_inputs
    from staged_vlm_jax.data.screen import DataScreen
    from staged_vlm_jax.data.tokenizer import load_tokenizer
    from staged_vlm_jax.models.hf_io import read_config
    from staged_vlm_jax.train.config import DataSpec

    family, _ = read_config(model)
    data = DataSpec()
    images = image_inputs(family.name, data.image_resize, data.min_pixels, data.max_pixels, data.image_backend)
    return DataScreen(load_tokenizer(model), images, max_prompt_length, on_error, verify_images=True)


def _data_build_perception(args: argparse.Namespace) -> int:
    """Generates, filters and writes Stage-1 MCQs (`data.builders.perception`), a summary line per step."""
    import tempfile

    from staged_vlm_jax.data.builders.perception import PerceptionSpec, build_perception
    from staged_vlm_jax.paths import as_path
    from staged_vlm_jax.train.config import ConfigKeyError

    filter_urls = args.filter_urls or [""] * len(args.filters)
    if not args.filters:
        raise ConfigKeyError("--filters: name at least one filter model")
    if len(filter_urls) != len(args.filters):
        raise ConfigKeyError(f"--filters names {len(args.filters)} models but --filter-urls {len(filter_urls)} "
                             "endpoints; give one entry per filter (empty for a local model)")  # fmt: skip
    urls = {name: url for name, url in zip([args.generator, *args.filters], [args.generator_url, *filter_urls],
                                           strict=True) if url}  # fmt: skip
    named = lambda name: name if name in urls else str(as_path(name))  # a local model by its absolute path
    spec = PerceptionSpec(str(as_path(args.captions)), str(as_path(args.images)), args.out, named(args.generator),
                          tuple(map(named, args.filters)), args.caption_key, args.image_key, args.id_key, args.limit,
                          args.batch_size, args.chat_template)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="staged-vlm-data-") as scratch:
        build_perception(spec, _data_models(args, urls, scratch))
    return 0


def _data_pass_rate(args: argparse.Namespace) -> int:
    """Samples and grades this shard's rows (`data.builders.pass_rate`); prints a summary line."""
    import tempfile

    from staged_vlm_jax.data.builders.pass_rate import pass_rate
    from staged_vlm_jax.rl.rewards import RewardPool, problem
    from staged_vlm_jax.train.config import ConfigKeyError, RewardSpec

    if reward_problem := problem(args.reward):
        raise ConfigKeyError(f"--reward: {reward_problem}")
    if not 0 <= args.shard < args.num_shards:
        raise ConfigKeyError(f"--shard {args.shard} is not in [0, --num-shards {args.num_shards})")
    reward = RewardSpec(args.reward)  # the training defaults: workers, per-answer timeout, limits
    pool = RewardPool(reward.name, num_workers=reward.num_workers, timeout_s=reward.timeout_s,
                      memory_limit_mb=reward.memory_limit_mb or None,
                      cpu_limit_s=reward.cpu_limit_s or None)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="staged-vlm-data-") as scratch, pool:
        load = _data_models(args, {}, scratch)
        print(pass_rate(args.data, args.out, lambda: load(args.model), pool.score, capability=args.capability,
                        image_root=args.image_root, k=args.k, temperature=args.temperature, top_p=args.top_p,
                        top_k=args.top_k, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                        prompt=args.prompt, shard=args.shard, num_shards=args.num_shards))  # fmt: skip
    return 0


def _data_models(args: argparse.Namespace, urls: dict[str, str], scratch: str):
    """``load(name)`` for the data builders: an endpoint's model for a name in ``urls``, else a local model (a run's
    checkpoint exported under ``scratch``) on one rollout engine shared by all (its programs compile once)."""
    import functools
    import tempfile

    from staged_vlm_jax.data.builders.generators import EndpointGenerator, LocalGenerator
    from staged_vlm_jax.models.sharding import make_mesh
    from staged_vlm_jax.rl.rollout import RolloutEngine

    engine = functools.cache(lambda: RolloutEngine(mesh=make_mesh({"data": -1, "fsdp": 1, "tensor": 1})))

    def load(name: str):
        if name in urls:
            return EndpointGenerator(name, _data_endpoint_chat(urls[name], name))
        return LocalGenerator.load(name, tempfile.mkdtemp(dir=scratch), engine(), dtype=args.dtype,
                                   min_pixels=args.min_pixels, max_pixels=args.max_pixels)  # fmt: skip

    return load


def _data_endpoint_chat(url: str, model: str):
    """``chat(messages, max_tokens, temperature)`` (`generators.ChatFn`) through `eval.judge.Judge`'s client, which
    retries and asks greedily; a request that fails for good is a one-line error (a rerun resumes)."""
    from staged_vlm_jax.data.schema import DataError
    from staged_vlm_jax.eval.judge import Judge, JudgeError, JudgeSpec
    from staged_vlm_jax.train.config import ConfigKeyError

    problems = JudgeSpec(url=url, model=model).problems()
    if problems:
        raise ConfigKeyError(f"{url}: {problems[0]}")
    clients: dict[int, Judge] = {}

    def chat(messages, max_tokens: int, temperature: float) -> str:
        if temperature:
            raise ValueError(f"{url}: endpoint requests are greedy, got temperature {temperature}")
        if max_tokens not in clients:
            clients[max_tokens] = Judge(JudgeSpec(url=url, model=model, max_tokens=max_tokens))
        try:
            return clients[max_tokens].complete(messages)
        except JudgeError as error:
            raise DataError(url, model, str(error), reason="endpoint_failed") from error

    return chat


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config file (configs/*.py[:argument])")
    parser.add_argument("--workdir", required=True, help="run directory; rerunning on it resumes")
    parser.add_argument("--allow-config-change", action="store_true", help="resume with a config that differs")
    parser.add_argument("--allow-data-change", action="store_true", help="resume although a data file changed")
    parser.add_argument("--branch-from", metavar="WORKDIR", help="start from another run's stage end instead of "
                        "training the stages both share (with --branch-after; see train/branch.py)")  # fmt: skip
    parser.add_argument("--branch-after", metavar="STAGE", help="with --branch-from: the last shared stage")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: jax.distributed.initialize(), auto-detected on TPU VMs and SLURM",
    )
    parser.add_argument("--coordinator", help="with --distributed: the coordinator's HOST:PORT (process 0's)")
    parser.add_argument("--num-processes", type=int, help="with --distributed: how many processes join")
    parser.add_argument("--process-id", type=int, help="with --distributed: this process's index")
    parser.epilog = "Config values are overridden with ml-collections flags, e.g. --config.rollout.n=8."


def load_config(config: str, overrides: Sequence[str]):
    """The ml-collections config of ``config`` (``file.py[:arg]``) with ``--config.key=value`` overrides."""
    from absl import flags
    from ml_collections import config_flags

    from staged_vlm_jax.train.config import ConfigKeyError

    bad = [item for item in overrides if not item.startswith("--config.")]
    if bad:
        raise ConfigKeyError(f"unknown arguments {bad}; config overrides look like --config.rollout.n=8")
    if not os.path.isfile(config.split(":")[0]):
        raise ConfigKeyError(f"--config {config}: no such config file")

    def load(overrides: Sequence[str]):
        argv = ["staged-vlm", f"--config={config}", *overrides]
        values = flags.FlagValues()
        # sys_argv: the overrides are read from it (by default ml-collections reads the process's sys.argv).
        config_flags.DEFINE_config_file("config", None, "run config", flag_values=values, lock_config=True,
                                        sys_argv=argv)  # fmt: skip
        values(argv)
        return values.config

    try:
        return load(overrides)
    except flags.Error as error:
        raise ConfigKeyError(" ".join(str(error).split())) from error
    except (AttributeError, KeyError) as error:  # an override of a key the config does not have
        raise unknown_override(load([]), overrides) from error


def unknown_override(config, overrides: Sequence[str]):
    """The `ConfigKeyError` for the first of ``overrides`` naming a key ``config`` lacks, with the closest valid
    key at that level ("did you mean")."""
    from staged_vlm_jax.train.config import ConfigKeyError, unknown_key

    for override in overrides:
        node, where = config, "config"
        for part in override.removeprefix("--config.").split("=")[0].split("."):
            if not hasattr(node, "keys"):
                return ConfigKeyError(f"{override}: {where} is a value, not a section")
            if part not in node:
                return unknown_key(part, list(node.keys()), where)
            node, where = node[part], f"{where}.{part}"
    return ConfigKeyError(f"{' '.join(overrides)}: unknown config key")


def _train(args: argparse.Namespace) -> int:
    """Runs (or resumes) the config's stages in the workdir, then writes the plots."""
    import jax

    from staged_vlm_jax.train.config import ConfigKeyError
    from staged_vlm_jax.train.plots import plot_run
    from staged_vlm_jax.train.stages import StagedRun

    if args.distributed:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    elif args.coordinator or args.num_processes or args.process_id is not None:
        raise ConfigKeyError("--coordinator / --num-processes / --process-id need --distributed")
    if (args.branch_from is None) != (args.branch_after is None):
        raise ConfigKeyError("--branch-from and --branch-after go together")
    branch_from = (args.branch_from, args.branch_after) if args.branch_from else None
    run = StagedRun(load_config(args.config, args.overrides), args.workdir, branch_from=branch_from,
                    allow_config_change=args.allow_config_change, allow_data_change=args.allow_data_change)  # fmt: skip
    run.run()
    if jax.process_index() == 0:
        plot_run(run.workdir)
        print(f"done: {run.total_steps()} steps; results in {run.workdir / 'results.md'}")
    return 0


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    from staged_vlm_jax.train.plan import DEVICE_KINDS

    parser.add_argument("--config", required=True, help="config file (configs/*.py[:argument])")
    parser.add_argument("--topology", default=None, help=f"size the programs for KIND:DEVICES, KIND one of "
                        f"{', '.join(DEVICE_KINDS)} (e.g. h100-80gb:8, tpu-v5p:64)")  # fmt: skip
    parser.add_argument("--headroom", type=float, default=0.9, help="share of device memory programs may use")
    parser.epilog = "Config values are overridden with ml-collections flags, e.g. --config.rollout.n=8."


def _plan(args: argparse.Namespace) -> int:
    """Prints the stage table and, with --topology, each program's per-device memory and FLOPs, compiled ahead of
    time for shapes only: reads the model's config.json and counts data rows; no weights, no images. Exit status 1
    when the programs do not fit."""
    from staged_vlm_jax.train import plan

    target = plan.topology(args.topology) if args.topology else None
    if target is not None:
        plan.use_host_devices(target.devices)
    lines = plan.plan_lines(load_config(args.config, args.overrides), target, args.headroom)
    print("\n".join(lines))
    return 1 if lines[-1].startswith("plan: does not fit") else 0


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="evaluation config (configs/eval/*.py)")
    parser.add_argument("--model", required=True, help="a Hugging Face directory, or a run's workdir / checkpoints/")
    parser.add_argument("--step", type=int, default=None, help="with a run: the checkpoint step (default: latest)")
    parser.add_argument("--workdir", required=True, help="predictions, scores.json, table1.md; rerunning resumes")
    parser.add_argument("--limit", type=int, default=None, help="only the first N records of each benchmark")
    _compilation_cache_argument(parser)
    parser.epilog = "Config values are overridden with ml-collections flags, e.g. --config.max_new_tokens=1024."


def _compilation_cache_argument(parser: argparse.ArgumentParser) -> None:
    from staged_vlm_jax.compile_cache import DEFAULT

    parser.add_argument("--compilation-cache", default=DEFAULT, metavar="DIR",
                        help=f"JAX's persistent compilation cache: a rerun loads its programs, not compiling them "
                        f"(default {DEFAULT}; '': off)")  # fmt: skip


def _eval(args: argparse.Namespace) -> int:
    """Answers and scores the config's benchmarks with the model (`eval.suite`), printing Table 1."""
    from staged_vlm_jax import compile_cache, models
    from staged_vlm_jax.data.tokenizer import load_tokenizer
    from staged_vlm_jax.eval import suite
    from staged_vlm_jax.models.hf_io import read_config
    from staged_vlm_jax.models.sharding import make_mesh
    from staged_vlm_jax.paths import as_path
    from staged_vlm_jax.rl.rollout import RolloutEngine
    from staged_vlm_jax.train.config import ConfigKeyError, build
    from staged_vlm_jax.train.export import model_directory

    spec = build(suite.SuiteSpec, load_config(args.config, args.overrides), "config")
    problems = spec.problems()
    if problems:
        raise ConfigKeyError(f"config.{problems[0]}")
    compile_cache.enable(args.compilation_cache)
    workdir = as_path(args.workdir)
    model_dir, step = model_directory(args.model, workdir / "model", args.step)
    if step is not None:
        print(f"eval: exported step {step} of {args.model} to {model_dir}", file=sys.stderr)
    family, _ = read_config(model_dir)
    mesh = make_mesh(dict(spec.mesh))
    model, _ = models.load_hf(model_dir, dtype=spec.dtype, mesh=mesh)
    runner = suite.SuiteRunner(spec, model, load_tokenizer(model_dir), suite.image_inputs(spec, family.name),
                               RolloutEngine(suite.engine_config(spec), mesh))  # fmt: skip
    runner.run(workdir, args.limit)
    print((workdir / "table1.md").read_text(), end="")
    return 0


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    from staged_vlm_jax.serve import ServeSpec

    parser.add_argument("--model", required=True, help="a Hugging Face directory, or a run's workdir / checkpoints/")
    parser.add_argument("--step", type=int, default=None, help="with a run: the checkpoint step (default: latest)")
    parser.add_argument("--served-model-name", default=None, help="the model id clients send (default: dir name)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", default="bfloat16", help="parameter dtype (default bfloat16)")
    parser.add_argument("--mesh", default='{"data": -1, "fsdp": 1, "tensor": 1}', help="device mesh as JSON "
                        "(default: the model on every device, batches split over them, as eval)")  # fmt: skip
    spec = ServeSpec("")
    for flag, help_text in (("max_batch", "rows (prompts x n) decoded together"),
                            ("max_wait_ms", "how long a request waits for others to batch with"),
                            ("max_queue", "queued requests before 429"),
                            ("max_model_len", "prompt + completion tokens per request"),
                            ("max_tokens", "completion tokens when a request gives no max_tokens"),
                            ("segment", "tokens decoded per device call between streaming updates")):  # fmt: skip
        value = getattr(spec, flag)
        parser.add_argument(f"--{flag.replace('_', '-')}", type=type(value), default=value,
                            help=f"{help_text} (default {value})")  # fmt: skip
    parser.add_argument("--allow-local-images", action="store_true", help="accept image_url paths on this machine")
    parser.add_argument("--min-pixels", type=int, default=None, help="image size bounds (default: staged-vlm eval's)")
    parser.add_argument("--max-pixels", type=int, default=None, help="image size bounds (default: staged-vlm eval's)")
    parser.add_argument("--export-dir", default=None, help="with a run: where its checkpoint is exported "
                        "(default: a temporary directory, removed at exit)")  # fmt: skip
    _compilation_cache_argument(parser)


def _serve(args: argparse.Namespace) -> int:
    """Loads the model and serves OpenAI-compatible chat completions until interrupted (`serve`)."""
    import tempfile

    from staged_vlm_jax import compile_cache, models
    from staged_vlm_jax.data.images import image_inputs
    from staged_vlm_jax.data.tokenizer import load_tokenizer
    from staged_vlm_jax.eval.suite import SuiteSpec
    from staged_vlm_jax.models.hf_io import read_config
    from staged_vlm_jax.models.sharding import make_mesh
    from staged_vlm_jax.rl.rollout import RolloutEngine
    from staged_vlm_jax.serve import Server, ServeSpec, serve
    from staged_vlm_jax.train.export import model_directory

    with tempfile.TemporaryDirectory(prefix="staged-vlm-serve-") as scratch:
        model_dir, step = model_directory(args.model, args.export_dir or scratch, args.step)
        if step is not None:
            print(f"serve: exported step {step} of {args.model} to {model_dir}", file=sys.stderr)
        family, _ = read_config(model_dir)
        compile_cache.enable(args.compilation_cache)
        mesh = make_mesh(json.loads(args.mesh))
        model, _ = models.load_hf(model_dir, dtype=args.dtype, mesh=mesh)
        suite = SuiteSpec({})
        images = image_inputs(family.name, suite.image_resize, args.min_pixels or suite.min_pixels,
                              args.max_pixels or suite.max_pixels, suite.image_backend)  # fmt: skip
        name = args.served_model_name or os.path.basename(os.path.normpath(args.model))
        spec = ServeSpec(name, **{flag: getattr(args, flag) for flag in ("max_batch", "max_wait_ms", "max_queue",
                         "max_model_len", "max_tokens", "segment", "allow_local_images")})  # fmt: skip
        server = Server(spec, model, load_tokenizer(model_dir), images, RolloutEngine(mesh=mesh))
        serve(server, args.host, args.port)
    return 0


def _compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directories", nargs="+", help="evaluation workdirs, or training runs with an eval/ dir")
    parser.add_argument("--out", required=True, help="where compare.md and the plots go")
    parser.add_argument("--baseline", default=None, help="the row deltas subtract (a directory's name; default: first)")


def _compare(args: argparse.Namespace) -> int:
    from staged_vlm_jax.eval.compare import compare

    print(compare(args.directories, args.out, args.baseline).read_text(), end="")
    return 0


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a run's checkpoints/ directory (or its workdir)")
    parser.add_argument("--step", type=int, default=None, help="global step to export (default: the latest)")
    parser.add_argument("--out", required=True, help="output Hugging Face directory")


def _export(args: argparse.Namespace) -> int:
    from staged_vlm_jax.train.export import export_hf

    out, step = export_hf(args.checkpoint, args.out, args.step)
    print(f"exported step {step} to {out}")
    return 0


def _plot_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="run directory holding metrics.jsonl")


def _plot(args: argparse.Namespace) -> int:
    from staged_vlm_jax.train.plots import plot_run

    for path in plot_run(args.workdir):
        print(path)
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "train": ("run or resume a config's stages in a workdir", _train_arguments, _train),
    "eval": ("answer and score benchmark files with a model (resumable); prints Table 1", _eval_arguments, _eval),
    "serve": ("OpenAI-compatible chat completions over the model (/v1/chat/completions)", _serve_arguments, _serve),
    "compare": ("runs side by side as Table 1, with deltas and plots", _compare_arguments, _compare),
    "export": ("write a Hugging Face directory from a run's checkpoint", _export_arguments, _export),
    "plan": (
        "stage table; with --topology, per-device memory and FLOPs of every program, compiled ahead of time",
        _plan_arguments,
        _plan,
    ),
    "plot": ("plot reward, accuracy and response length per step into <workdir>/plots", _plot_arguments, _plot),
    "inspect": (
        "load a Hugging Face checkpoint and print its config and parameter counts",
        _inspect_arguments,
        _inspect,
    ),
    "data": (
        "data set tools: `data convert` (rows + images -> a TFDS data set), `data build-perception` (the paper's "
        "stage-1 MCQ pipeline), `data pass-rate` (k-sample difficulty columns)",
        _data_arguments,
        lambda args: args.data_run(args),
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="staged-vlm", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of expected errors too")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text))
    args, extra = parser.parse_known_args(argv)
    if args.command in ("train", "plan", "eval"):
        args.overrides = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return COMMANDS[args.command][2](args)
    except Exception as error:
        if args.debug or not expected(error):
            raise
        print(f"staged-vlm {args.command}: error: {error}", file=sys.stderr)
        return 2


# A workdir, output or input the user must fix: no permission, a read-only or full file system.
USER_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR)


def expected(error: Exception) -> bool:
    """Whether ``error`` is one a user fixes from its message alone (`expected_errors`, or a file system that
    refuses: `USER_ERRNOS`); others keep their tracebacks."""
    return isinstance(error, expected_errors()) or (isinstance(error, OSError) and error.errno in USER_ERRNOS)


def expected_errors() -> tuple[type[Exception], ...]:
    """Failures a user fixes from the message alone (config, path, data, checkpoint, a collapsed run)."""
    from staged_vlm_jax.data.schema import DataError
    from staged_vlm_jax.data.tokenizer import TokenizerError
    from staged_vlm_jax.models import CheckpointError, ConfigError
    from staged_vlm_jax.train.branch import BranchError
    from staged_vlm_jax.train.checkpoint import IncompatibleCheckpointError
    from staged_vlm_jax.train.config import ConfigKeyError
    from staged_vlm_jax.train.metrics import MetricsFileError
    from staged_vlm_jax.train.stages import DamagedCheckpointsError
    from staged_vlm_jax.train.watch import CollapseError
    from staged_vlm_jax.train.workdir import ConfigMismatchError, DataChangedError

    return (ConfigKeyError, ConfigMismatchError, DataChangedError, ConfigError, DataError, TokenizerError,
            CheckpointError, IncompatibleCheckpointError, DamagedCheckpointsError, CollapseError, MetricsFileError,
            BranchError, FileNotFoundError, FileExistsError)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
