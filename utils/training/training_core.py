"""The training lifecycle: run folders, resume by name, best weights, early stopping, export and publishing.

``TrainingCoordinator`` is a thin shell over the engine (``utils.training.loop``):
it names each run, gives it a folder, and writes what a run leaves behind.
It is not a second training loop; every step runs in ``loop.train``. The run
folder's rules (its name, ``config.json``, the resume rule, replacing an old run
safely) live in ``utils.training.run_folder``.

A run folder ``output_dir/<run_name>/`` holds:

- ``checkpoints/last.pt`` (each epoch end) and ``checkpoints/best.pt`` (each improvement);
- ``metrics.csv`` (one row per epoch) and ``steps.csv`` (one row per logging step);
- ``config.json``: the exact settings of the run, read back by ``resume_training``;
- ``tokenizer.json``: the tokenizer its text was encoded with (``last.pt`` carries a copy);
- ``results.json`` and ``training_curves.png``.

Example:
    >>> coordinator = TrainingCoordinator(output_dir="runs")
    >>> results = coordinator.train(model, config, run_name="baseline", n_epochs=10, early_stopping_patience=2)
    >>> export = coordinator.export_state_dict(results)       # runs/baseline/export, with a parity check
    >>> coordinator.resume_training("runs/baseline", model, config, n_epochs=20)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from utils.checks import check_bool, check_choice, check_non_negative_number, check_path, check_positive_int
from utils.device import resolve_device
from utils.folders import write_json_atomic
from utils.model_helpers import validate_model
from utils.records import to_jsonable
from utils.training import checkpoint as ckpt
from utils.training import loop, run_folder
from utils.training.callbacks import EarlyStopping
from utils.training.plots import create_training_figure
from utils.training.precision import PRECISIONS

# The run folder's rules live in run_folder; these names stay importable from here.
from utils.training.run_folder import CONFIG_FILE as CONFIG_FILE
from utils.training.run_folder import RESUME_MAY_CHANGE as RESUME_MAY_CHANGE
from utils.training.run_folder import RUN_FORMAT_VERSION as RUN_FORMAT_VERSION
from utils.training.run_folder import check_run_name as check_run_name
from utils.training.run_folder import read_run_config as read_run_config
from utils.training.settings import LIFECYCLE_DEFAULTS, QUICK, TrainingSettings, amp_by_default
from utils.training.text_tokenizer import TOKENIZER_FILE

# A short run on the built-in corpus, to check the wiring (about 30 steps of a tiny model: seconds on a CPU).
QUICK_TRAIN = QUICK


class TrainingCoordinator:
    """Train, keep the best, stop early, resume by name, export and publish: one folder per run.

    Args:
        output_dir: where run folders are made (created at the first run).
        precision: the default precision of its runs ('auto', 'fp32', 'fp16', 'bf16').
        device: the default device ('auto', 'cpu', 'cuda', 'cuda:N').
        use_wandb: log runs to W&B by default (offline without an API key).
        wandb_project: the W&B project.
        progress: show progress bars by default.

    Raises:
        ValueError: on a bad argument, naming it.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike = "./training_output",
        precision: str = TrainingSettings.precision,
        device: str | torch.device | None = TrainingSettings.device,
        use_wandb: bool = TrainingSettings.use_wandb,
        *,
        wandb_project: str = TrainingSettings.wandb_project,
        progress: bool = TrainingSettings.progress,
    ) -> None:
        check_path(output_dir, "output_dir")
        ckpt.check_checkpoint_dir(output_dir, name="output_dir")
        check_choice(precision, "precision", PRECISIONS)
        resolve_device(device)
        check_bool(use_wandb, "use_wandb")
        check_bool(progress, "progress")
        self.output_dir = Path(output_dir)
        self.defaults = dict(
            precision=precision, device=device, use_wandb=use_wandb, wandb_project=wandb_project, progress=progress
        )

    def train(
        self,
        model: nn.Module,
        config: Any,
        train_data: Any = None,
        val_data: Any = None,
        *,
        run_name: str | None = None,
        n_epochs: int = TrainingSettings.n_epochs,
        learning_rate: float = TrainingSettings.learning_rate,
        batch_size: int = TrainingSettings.batch_size,
        gradient_accumulation_steps: int = TrainingSettings.gradient_accumulation_steps,
        use_amp: bool | None = LIFECYCLE_DEFAULTS["use_amp"],
        early_stopping_patience: int | None = None,
        early_stopping_min_delta: float = 0.0,
        monitor: str = TrainingSettings.monitor,
        mode: str = TrainingSettings.mode,
        load_best: bool = LIFECYCLE_DEFAULTS["load_best"],
        resume: bool = False,
        overwrite: bool = False,
        precision: str | None = None,
        device: str | torch.device | None = None,
        use_wandb: bool | None = None,
        max_steps: int | None = TrainingSettings.max_steps,
        seed: int = TrainingSettings.seed,
        grad_clip: float | None = TrainingSettings.grad_clip,
        warmup_steps: int | None = TrainingSettings.warmup_steps,
        weight_decay: float = TrainingSettings.weight_decay,
        log_every: int = TrainingSettings.log_every,
        callbacks: Sequence[Any] = (),
        seq_len: int | None = TrainingSettings.seq_len,
        max_val_batches: int | None = TrainingSettings.max_val_batches,
        max_corpus_bytes: int = TrainingSettings.max_corpus_bytes,
        init_loss_scale: float = TrainingSettings.init_loss_scale,
        wandb_project: str | None = None,
        progress: bool | None = None,
        compile: bool | dict[str, Any] = TrainingSettings.compile,
        tokenizer: Any = TrainingSettings.tokenizer,
        text_column: str | None = TrainingSettings.text_column,
        sample_every: int | None = TrainingSettings.sample_every,
        sample_prompt: str | None = TrainingSettings.sample_prompt,
        strategy: str = TrainingSettings.strategy,
        fsdp_wrap: str | type | tuple | None = TrainingSettings.fsdp_wrap,
        activation_checkpointing: bool = TrainingSettings.activation_checkpointing,
    ) -> dict[str, Any]:
        """Train ``model`` in its own run folder; every keyword of ``test_fine_tuning`` works here too.

        Beyond ``test_fine_tuning``'s keywords (``checkpoint_dir`` and
        ``resume_from`` are the run folder's), it takes the lifecycle ones:

        Args:
            run_name: the run folder's name (letters, digits, '.', '_', '-');
                default ``run-<date>-<time>``.
            early_stopping_patience: stop after this many epochs without an
                improvement of ``monitor`` by more than ``early_stopping_min_delta``
                (patience counts epochs); None: no early stopping.
            use_amp: None (default) trains in mixed precision (bf16, or fp16 on
                older GPUs) when ``precision`` is 'auto'; False keeps FP32.
            load_best: load ``best.pt``'s weights into the model at the end (default True).
            resume: continue the run folder ``run_name`` from its ``last.pt``.
            overwrite: replace an existing run folder of that name.
            precision, device, use_wandb, wandb_project, progress: None takes the coordinator's.

        Returns:
            ``test_fine_tuning``'s results (figure included), plus ``run_dir``,
            ``best_checkpoint_path``, ``best_value``, ``stopped_early``, ``model``
            (the user's own model, not a wrapper) and ``config``.

        Raises:
            ValueError, TypeError: on a bad argument, an existing run folder
                without ``resume``/``overwrite``, or ``resume`` with nothing to
                resume: before any work, with nothing written.
        """
        options = {k: v for k, v in locals().items() if k not in ("self", "model", "config", "train_data", "val_data")}
        lifecycle = _pop_lifecycle(options)
        run_dir = run_folder.check_run_dir(
            self.output_dir, lifecycle["run_name"], lifecycle["resume"], lifecycle["overwrite"]
        )
        fields = {k: self.defaults[k] if k in self.defaults and v is None else v for k, v in options.items()}
        fields["use_amp"] = amp_by_default(fields["use_amp"], fields["precision"])
        fields.pop("callbacks")
        return self._run(run_dir, model, config, train_data, val_data, fields, lifecycle, callbacks)

    def quick_train(self, model: nn.Module, config: Any, **overrides: Any) -> dict[str, Any]:
        """A short run on the built-in corpus, to check the wiring: about a minute at most on a laptop CPU.

        Nothing is downloaded. ``overrides`` are ``train`` keywords (``run_name``, ``max_steps`` ...).
        """
        run_name = overrides.pop("run_name", None) or run_folder.default_run_name(self.output_dir, "quick")
        return self.train(model, config, **{**QUICK_TRAIN, "run_name": run_name, **overrides})

    def resume_training(
        self,
        run_dir_or_checkpoint: str | os.PathLike,
        model: nn.Module,
        config: Any,
        n_epochs: int | None = None,
        *,
        max_steps: int | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = None,
        use_wandb: bool | None = None,
        wandb_project: str | None = None,
        load_best: bool | None = None,
        sample_every: int | None = None,
        sample_prompt: str | None = None,
        train_data: Any = None,
        val_data: Any = None,
        callbacks: Sequence[Any] = (),
    ) -> dict[str, Any]:
        """Continue a run exactly where its ``last.pt`` left it, with the settings in its ``config.json``.

        With the run's own ``n_epochs``, the result has the same losses and
        weights as a run that never stopped (on one process); early-stopping
        patience and the best value carry over, and the text is encoded with the
        tokenizer ``last.pt`` saved (a 'bpe' is never trained again). ``n_epochs`` (counted from the
        run's start) or ``max_steps`` may be raised to train on; the learning-rate
        schedule then stretches to the new length. ``device``, ``progress``,
        ``use_wandb``, ``wandb_project``, ``load_best``, ``sample_every`` and ``sample_prompt`` may differ from the
        original run's: these keywords are exactly ``RESUME_MAY_CHANGE``, the
        settings nothing a resumed run computes depends on. None keeps the run's.

        Raises:
            FileNotFoundError, ValueError: not a run folder, no checkpoint, a
                ``config.json`` that lacks a section or no longer matches
                ``last.pt`` (it was edited), or a run that trained on user data
                resumed without it.
        """
        run_dir = run_folder.find_run_dir(run_dir_or_checkpoint)
        saved = read_run_config(run_dir)
        if saved["data"]["train_data"] != "python-stdlib" and train_data is None:
            raise ValueError(
                f"run {run_dir.name!r} trained on your own data ({saved['data']['train_data']}); "
                "pass the same train_data (and val_data) to resume it exactly"
            )
        fields = dict(saved["settings"])
        changes = dict(
            n_epochs=n_epochs,
            max_steps=max_steps,
            device=device,
            progress=progress,
            use_wandb=use_wandb,
            wandb_project=wandb_project,
            load_best=load_best,
            sample_every=sample_every,
            sample_prompt=sample_prompt,
        )
        fields.update({k: v for k, v in changes.items() if v is not None})  # only what RESUME_MAY_CHANGE allows
        lifecycle = {**saved["lifecycle"], "run_name": run_dir.name, "resume": True, "overwrite": False}
        return self._run(run_dir, model, config, train_data, val_data, fields, lifecycle, callbacks)

    def export_state_dict(
        self,
        results_or_model: dict[str, Any] | nn.Module,
        output_dir: str | os.PathLike | None = None,
        *,
        config: Any = None,
        model_factory: Any = None,
        overwrite: bool = False,
    ) -> dict[str, Any]:
        """Export the weights (safetensors), config, metadata and a model card, then check parity.

        ``output_dir`` defaults to ``<run_dir>/export`` for a results dict from ``train``.
        See ``utils.training.export.export_state_dict``.
        """
        from utils.training.export import export_state_dict

        if output_dir is None:
            if not isinstance(results_or_model, dict) or "run_dir" not in results_or_model:
                raise ValueError("output_dir is needed unless you pass the results of TrainingCoordinator.train")
            output_dir = Path(results_or_model["run_dir"]) / "export"
        return export_state_dict(
            results_or_model, output_dir, config=config, model_factory=model_factory, overwrite=overwrite
        )

    def publish_to_hub(self, export_dir: str | os.PathLike, repo_id: str, **options: Any) -> dict[str, Any]:
        """Upload an export folder to the Hugging Face Hub; see ``utils.training.publish.publish_to_hub``."""
        from utils.training.publish import publish_to_hub

        return publish_to_hub(export_dir, repo_id, **options)

    def _run(
        self,
        run_dir: Path,
        model: nn.Module,
        config: Any,
        train_data: Any,
        val_data: Any,
        fields: dict[str, Any],
        lifecycle: dict[str, Any],
        callbacks: Sequence[Any],
    ) -> dict[str, Any]:
        """Check everything, prepare the folder, train through the engine, and write what the run leaves."""
        validate_model(model)
        resume = lifecycle["resume"]
        checkpoints = run_dir / "checkpoints"
        settings = loop.TrainingSettings(
            **fields, checkpoint_dir=checkpoints, resume_from=ckpt.checkpoint_path(checkpoints) if resume else None
        )
        if resume:
            run_folder.check_resumable(run_dir, settings)
        stopper = _early_stopping(lifecycle, settings)
        # The settings record first: each last.pt then carries a copy of the settings it was trained with.
        record = run_folder.SettingsRecord(run_folder.settings_record(settings))
        all_callbacks = [record, *callbacks, *([stopper] if stopper else [])]
        with run_folder.prepared_run_dir(run_dir, replace=lifecycle["overwrite"], keep=resume):
            run_config = run_folder.run_config(run_dir, settings, lifecycle, model, config, train_data, val_data)
            if not resume:
                run_folder.write_run_config(run_dir, run_config)
            results = loop.train(model, config, settings, train_data, val_data, callbacks=all_callbacks)
        run_folder.write_run_config(run_dir, run_config)  # on resume, n_epochs may have grown
        return _finish_run(run_dir, results, model, config)


# -- helpers --------------------------------------------------------------------


def train_model(model: nn.Module, config: Any, train_data: Any = None, **kwargs: Any) -> dict[str, Any]:
    """A default coordinator's ``train``: ``TrainingCoordinator(output_dir=...).train(model, config, train_data, ...)``.

    ``output_dir`` (and the coordinator's other arguments) may be passed here too.
    """
    coordinator_args = {k: kwargs.pop(k) for k in ("output_dir",) if k in kwargs}
    return TrainingCoordinator(**coordinator_args).train(model, config, train_data, **kwargs)


def _pop_lifecycle(options: dict[str, Any]) -> dict[str, Any]:
    """Take the lifecycle keywords out of ``options`` and check them (the rest are engine settings)."""
    lifecycle = {k: options.pop(k) for k in ("run_name", "early_stopping_patience", "early_stopping_min_delta")}
    lifecycle.update(resume=options.pop("resume"), overwrite=options.pop("overwrite"))
    check_positive_int(lifecycle["early_stopping_patience"], "early_stopping_patience", allow_none=True)
    check_non_negative_number(lifecycle["early_stopping_min_delta"], "early_stopping_min_delta")
    return lifecycle


def _early_stopping(lifecycle: dict[str, Any], settings: loop.TrainingSettings) -> EarlyStopping | None:
    patience = lifecycle["early_stopping_patience"]
    if patience is None:
        return None
    return EarlyStopping(patience, lifecycle["early_stopping_min_delta"], monitor=settings.monitor, mode=settings.mode)


def _finish_run(run_dir: Path, results: dict[str, Any], model: nn.Module, config: Any) -> dict[str, Any]:
    """Write the run's tables, results and figure; return the results with the run's paths and the model."""
    figure = create_training_figure(results)
    results["metrics_summary"].to_csv(run_dir / "metrics.csv", index=False)
    results["step_history"].to_csv(run_dir / "steps.csv", index=False)
    figure.savefig(run_dir / "training_curves.png", dpi=110)
    plain = {k: v for k, v in results.items() if k not in ("metrics_summary", "step_history")}
    write_json_atomic(run_dir / "results.json", to_jsonable({"run_dir": str(run_dir), **plain}))
    if results.get("tokenizer") is not None:  # the run's tokenizer beside its weights: generate and export read it
        results["tokenizer"].save(run_dir / TOKENIZER_FILE)
    return {**results, "figure": figure, "run_dir": str(run_dir), "model": model, "config": config}
