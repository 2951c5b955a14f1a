"""Export: any checkpoint of a run as a Hugging Face model directory, with the run's tokenizer."""

from __future__ import annotations

from etils import epath
from flax import nnx

from staged_vlm_jax import models
from staged_vlm_jax.paths import PathLike, as_path, staged_output
from staged_vlm_jax.train import config as config_lib
from staged_vlm_jax.train import workdir as workdir_lib
from staged_vlm_jax.train.checkpoint import Checkpointer


def model_config(spec: config_lib.RunSpec):
    """The architecture config of the run's model: the HF directory's, or the family's tiny one."""
    if spec.model.path:
        return models.read_config(spec.model.path)[1]
    return models.tiny_config(spec.model.family, **spec.model.tiny)


def abstract_model(spec: config_lib.RunSpec) -> nnx.Module:
    """The run's model as shapes only (no memory): the target checkpoints restore into."""
    cfg = model_config(spec)
    return nnx.eval_shape(lambda: models.create(cfg, dtype=spec.model.dtype, seed=spec.seed))


def export_hf(checkpoints: PathLike, out: PathLike, step: int | None = None) -> tuple[epath.Path, int]:
    """Writes the weights of a run's checkpoint (``step``, default the latest) as a Hugging Face directory, with
    the run's tokenizer. ``checkpoints`` is the run's checkpoints/ directory or its workdir; either and ``out``
    may be remote (``gs://…``)."""
    checkpoints = as_path(checkpoints)
    if checkpoints.name != "checkpoints":
        checkpoints = checkpoints / "checkpoints"
    workdir = checkpoints.parent
    spec = workdir_lib.read_spec(workdir)
    checkpointer = Checkpointer(checkpoints, keep=1, stage_end_steps=(), async_save=False, read_only=True)
    steps = checkpointer.all_steps()
    if not steps or (step is not None and step not in steps):
        raise FileNotFoundError(f"{checkpoints}: no checkpoint{'' if step is None else f' at step {step}'} "
                                f"(saved steps: {steps})")  # fmt: skip
    step = steps[-1] if step is None else step
    model = checkpointer.restore_model(step, abstract_model(spec))
    checkpointer.close()
    with staged_output(out) as local:
        models.save_hf(model, model_config(spec), local)
        workdir_lib.tokenizer(spec, workdir).save_pretrained(local)
    return as_path(out), step


def model_directory(model: PathLike, export_to: PathLike, step: int | None = None) -> tuple[epath.Path, int | None]:
    """A Hugging Face directory of ``model`` for inference (`staged-vlm eval`, `staged-vlm serve`): ``model``
    itself when it is one (it has a config.json), else — a run's workdir or checkpoints/ — its checkpoint ``step``
    (default the latest) exported to ``export_to``; with the step exported (None for an HF directory)."""
    path = as_path(model)
    if (path / "config.json").exists() or not path.exists():  # a missing path fails where it is loaded, by name
        return path, None
    return export_hf(path, export_to, step)
