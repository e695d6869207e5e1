"""One settings vocabulary: every default of a training setting is ``TrainingSettings``' own.

Each public entry point that takes a setting by its name (the facade, the AMP benchmark, the
comparison, the search, the coordinator, the wizard's config) and the CLI's run profiles are
compared with ``utils.training.settings``. A copy that drifted (the CLI's ``--lr`` once
defaulted to 1e-3 while the library said 5e-5) fails here, naming the entry point and setting.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from utils import cli, tier3_benchmark_comparison, tier3_hyperparameter_search
from utils import tier3_training_utilities as tier3
from utils.training import amp_benchmark, settings
from utils.training.settings import (
    FROM_SCRATCH,
    LIFECYCLE_DEFAULTS,
    QUICK,
    SETTING_DEFAULTS,
    OptionError,
    TrainingSettings,
    from_options,
)
from utils.training.training_core import TrainingCoordinator
from utils.ui.config import WizardConfig

ENTRY_POINTS = {
    "test_fine_tuning": (tier3.test_fine_tuning, {}),
    "test_amp_speedup_benchmark": (amp_benchmark.test_amp_speedup_benchmark, {}),
    "test_benchmark_comparison": (tier3_benchmark_comparison.test_benchmark_comparison, {}),
    "test_hyperparameter_search": (tier3_hyperparameter_search.test_hyperparameter_search, {}),
    # The lifecycle trains for keeps: AMP under 'auto' and the best weights loaded, both declared in settings.py.
    "TrainingCoordinator.train": (TrainingCoordinator.train, LIFECYCLE_DEFAULTS),
    "TrainingCoordinator.__init__": (TrainingCoordinator.__init__, {}),
}


def _setting_defaults(function) -> dict[str, object]:
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if name in SETTING_DEFAULTS and parameter.default is not inspect.Parameter.empty
    }


def test_setting_defaults_are_the_dataclass_defaults():
    fields = dataclasses.fields(TrainingSettings)
    assert SETTING_DEFAULTS == {f.name: f.default for f in fields}
    assert SETTING_DEFAULTS["learning_rate"] == TrainingSettings.learning_rate == 5e-5  # the seed's default


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_signature_default_is_the_settings_default(entry):
    function, overrides = ENTRY_POINTS[entry]
    defaults = _setting_defaults(function)
    assert defaults, f"{entry} takes no setting by name: the test would check nothing"
    # None in the coordinator's train means "the coordinator's own", whose defaults are checked above.
    expected = {**SETTING_DEFAULTS, **overrides}
    drifted = {
        name: (value, expected[name])
        for name, value in defaults.items()
        if value != expected[name] and not (entry == "TrainingCoordinator.train" and value is None)
    }
    assert not drifted, f"{entry}: (its default, the settings default) = {drifted}"


def test_the_wizard_config_takes_its_defaults_from_the_settings():
    defaults = {f.name: f.default for f in dataclasses.fields(WizardConfig)}
    shared = {name: value for name, value in defaults.items() if name in SETTING_DEFAULTS}
    assert len(shared) >= 10
    assert shared == {name: SETTING_DEFAULTS[name] for name in shared}
    assert defaults["use_mixed_precision"] == LIFECYCLE_DEFAULTS["use_amp"]  # the wizard's name for use_amp


@pytest.mark.parametrize(("profile", "overrides"), [("FULL", FROM_SCRATCH), ("QUICK", QUICK)])
def test_the_cli_profiles_are_the_settings_under_a_named_profile(profile, overrides):
    run_profile = getattr(cli, profile)
    expected = {**SETTING_DEFAULTS, **overrides}
    training = {f.name: getattr(run_profile, f.name) for f in dataclasses.fields(run_profile) if f.name in expected}
    assert len(training) == 6 and training == {name: expected[name] for name in training}


def test_one_quick_profile():
    from utils.training import training_core

    assert training_core.QUICK_TRAIN == QUICK


def test_from_options_names_reserved_and_unknown_options_before_building():
    with pytest.raises(OptionError, match=r"^f does not take use_amp=: set per arm$"):
        from_options("f", {"use_amp": True}, reserved={"use_amp": "set per arm"})
    with pytest.raises(TypeError, match=r"^f got unknown option\(s\) \['lerning_rate'\]; it passes on \["):
        from_options("f", {"lerning_rate": 1e-3})
    with pytest.raises(ValueError, match="unknown option"):  # one error, both kinds: as every caller raised
        from_options("f", {"lerning_rate": 1e-3})
    built = from_options("f", {"seq_len": 8}, defaults={"learning_rate": 1e-3, "seq_len": 4}, max_steps=5)
    assert (built.seq_len, built.learning_rate, built.max_steps) == (8, 1e-3, 5)
    assert settings.from_options("f", {}).learning_rate == TrainingSettings.learning_rate


# --------------------------------------------------------------------------- the CLI's one flag table


def test_every_setting_flag_names_a_setting_and_every_flag_table_is_read_from_it():
    from utils.cli import common, train

    lifecycle = {"run_name", "early_stopping_patience"}
    assert set(common.SETTING_FLAGS) <= set(SETTING_DEFAULTS) | lifecycle
    by_dest = {common.flag_dest(flag): setting for setting, flag in common.SETTING_FLAGS.items()}
    assert train.CONFIG_FLAGS.items() <= by_dest.items()
    assert {dest: setting for dest, (_, setting) in train.RESUME_FLAGS.items()}.items() <= by_dest.items()
    assert {field: flag for field, (flag, _) in common.PROFILE_FLAGS.items()}.items() <= common.SETTING_FLAGS.items()


@pytest.mark.parametrize("subcommand", ["train", None])
def test_the_parsers_defaults_are_the_settings_defaults(subcommand):
    from utils.cli import main_job
    from utils.cli import train as train_cli

    parser = train_cli.build_train_parser() if subcommand == "train" else main_job.build_parser()
    defaults = vars(parser.parse_args([]))
    for setting in ("seed", "device", "precision"):
        assert defaults[setting] == SETTING_DEFAULTS[setting], setting
