"""The presets: each one validates with a tiny GPT, copies stay copies, and the recommendation is measured."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY

from utils import models
from utils.ui import presets
from utils.ui.presets import GOALS, PRESETS, ConfigPresets
from utils.ui.setup_wizard import WizardConfig

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

USER_TEXT_PRESETS = ("chat", "summarization")
LONGEST_SEQ_LEN = max(p.settings["seq_len"] for p in PRESETS.values())


@pytest.fixture(scope="module")
def long_gpt():
    """A 2-layer, 32-wide GPT that takes every preset's sequence length."""
    torch.manual_seed(0)
    return models.tiny_gpt(**{**TINY, "max_seq_len": LONGEST_SEQ_LEN})


@pytest.fixture
def text_file(tmp_path):
    """12 kB of plain UTF-8 text: enough blocks of 1024 bytes for a train/validation split."""
    path = tmp_path / "dialogues.txt"
    path.write_text("User: how do I sort a list?\nAssistant: call sorted(items), or items.sort().\n" * 160)
    return path


def test_the_seven_presets_exist_and_list_themselves():
    names = [row["name"] for row in ConfigPresets.preset_rows()]
    assert names == ["tiny", "small", "medium", "large", "code_generation", "chat", "summarization"]
    rows = {row["name"]: row for row in ConfigPresets.preset_rows()}
    assert rows["large"]["seq_len"] == 1024
    assert rows["tiny"]["hardware"] == "cpu" and rows["large"]["hardware"] == "gpu"
    assert rows["code_generation"]["data_source"] == "builtin"  # the built-in corpus is Python code
    assert all(rows[name]["data_source"] == "file" for name in USER_TEXT_PRESETS)


def test_list_presets_maps_each_name_to_its_description_as_the_seed_api_did():
    listed = ConfigPresets.list_presets()
    assert isinstance(listed, dict)
    assert list(listed) == ["tiny", "small", "medium", "large", "code_generation", "chat", "summarization"]
    assert listed == {name: preset.description for name, preset in PRESETS.items()}
    assert listed == {row["name"]: row["description"] for row in ConfigPresets.preset_rows()}
    listed["tiny"] = "changed"  # a new dict each call: the table stays as it is
    assert ConfigPresets.list_presets()["tiny"] == PRESETS["tiny"].description


def test_presets_hold_training_settings_only():
    training_and_data = set(WizardConfig.__dataclass_fields__) - {"preset"}
    for preset in PRESETS.values():
        assert set(preset.settings) <= training_and_data, preset.name
        config = ConfigPresets.get(preset.name)
        assert config.precision == "auto" and config.preset == preset.name
        assert config.dataset_path is None and config.texts is None  # no preset names a file, let alone a download


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_validates_with_a_tiny_gpt(name, long_gpt, text_file):
    model, config = long_gpt
    overrides = {"dataset_path": str(text_file)} if name in USER_TEXT_PRESETS else {}
    assert ConfigPresets.customize(name, **overrides).validate(model, config) == []


@pytest.mark.parametrize("name", USER_TEXT_PRESETS)
def test_user_text_presets_without_a_path_say_what_to_pass(name, long_gpt):
    model, config = long_gpt
    errors = ConfigPresets.get(name).validate(model, config)
    assert len(errors) == 1
    assert errors[0].startswith("dataset_path: ")
    assert "dataset_path=" in errors[0] and f"the {name!r} preset trains on your own text" in errors[0]


def test_get_returns_a_copy():
    first = ConfigPresets.get("tiny")
    original = first.to_dict()
    first.learning_rate = 123.0
    first.texts = ["changed"]
    first.seq_len = 7
    again = ConfigPresets.get("tiny")
    assert again.to_dict() == original
    assert again is not first
    assert PRESETS["tiny"].settings["learning_rate"] == 1e-3


def test_preset_table_cannot_be_changed_in_place():
    with pytest.raises(TypeError):
        PRESETS["tiny"].settings["learning_rate"] = 1.0
    with pytest.raises(TypeError):
        PRESETS["new"] = PRESETS["tiny"]


def test_get_unknown_name_lists_the_names():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny, small, medium, large"):
        ConfigPresets.get("huge")


def test_customize_changes_only_what_it_is_given():
    config = ConfigPresets.customize("small", n_epochs=1, learning_rate=1e-3)
    assert (config.n_epochs, config.learning_rate) == (1, 1e-3)
    assert config.seq_len == ConfigPresets.get("small").seq_len
    assert ConfigPresets.get("small").n_epochs == 2


def test_customize_rejects_unknown_keys_by_name():
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['lr'\].*'learning_rate' for 'lr'"):
        ConfigPresets.customize("tiny", lr=1e-3)
    with pytest.raises(TypeError, match=r"\['use_amp'\].*'use_mixed_precision'"):
        ConfigPresets.customize("tiny", use_amp=True)


def test_every_goal_maps_to_existing_presets():
    assert {"research", "experiment", "code", "chat", "summarization"} <= set(GOALS)
    for policy, candidates in GOALS.values():
        assert policy in ("largest", "first")
        assert candidates and set(candidates) <= set(PRESETS)
    assert GOALS["code"][1][0] == "code_generation"


def test_recommendation_with_a_tiny_budget_never_picks_a_long_preset():
    # 0.0001 h is 0.36 s: the tiny preset's 88 steps may or may not fit on a shared CPU, nothing larger does.
    result = ConfigPresets.get_recommendation("research", 0.0001)
    assert result["recommended"] in (None, "tiny")
    tiny = result["estimates"]["tiny"]
    assert tiny["seconds_per_step"] > 0 and tiny["optimizer_steps"] == 88
    assert tiny["method"].startswith("measured") and tiny["device"] == result["device"]
    assert tiny["total_s"] >= tiny["optimizer_steps"] * tiny["seconds_per_step"]
    assert result["estimates"]["small"]["fits"] is not True
    if result["recommended"] is None:
        assert "no preset for goal 'research' fits" in result["reason"] and "'tiny'" in result["reason"]
    print("\nresearch, 0.0001 h:", result["reason"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour: GPU-sized presets are skipped")
def test_recommendation_without_a_budget_takes_the_largest_preset_this_cpu_runs():
    result = ConfigPresets.get_recommendation("research")
    assert result["recommended"] == "small"
    assert "no time budget given" in result["reason"]
    assert "no CUDA" in result["estimates"]["large"]["skipped"]
    assert result["estimates"]["small"]["seconds_per_step"] > 0
    print("\nresearch, no budget:", result["reason"], result["estimates"]["small"]["method"])


def test_recommendation_skips_shapes_the_model_cannot_take(tiny_gpt):
    model, config = tiny_gpt  # max_seq_len 32: shorter than every preset's seq_len
    result = ConfigPresets.get_recommendation("quick", 1.0, model=model, config=config)
    assert result["recommended"] is None
    assert "exceeds the model's max_seq_len=32" in result["estimates"]["tiny"]["skipped"]
    assert "can run here" in result["reason"]


def test_recommendation_for_chat_assumes_a_data_size_until_it_has_your_text(long_gpt):
    model, config = long_gpt
    result = ConfigPresets.get_recommendation("chat", 10.0, model=model, config=config)
    estimate = result["estimates"]["chat"]
    assert result["recommended"] == "chat" and estimate["fits"] is True
    assert "assumed (no dataset_path yet)" in estimate["method"]


def test_recommendation_rejects_an_unknown_goal_and_a_bad_budget():
    with pytest.raises(ValueError, match="unknown goal 'fun'; the goals are research, experiment"):
        ConfigPresets.get_recommendation("fun")
    with pytest.raises(ValueError, match="time_budget_hours must be a positive finite number"):
        ConfigPresets.get_recommendation("research", -1)
    with pytest.raises(ValueError, match="a bool is not a number"):
        ConfigPresets.get_recommendation("research", True)


def test_choose_largest_stops_at_the_first_preset_over_the_budget():
    """The policy alone, with made-up times: no measuring of presets past the budget."""
    times = {"tiny": 10.0, "small": 100.0, "medium": 1000.0, "large": 10000.0}
    measured = []

    def measure(name):
        measured.append(name)
        return {"total_s": times[name], "optimizer_steps": 1, "seconds_per_step": times[name], "device": "cpu"}

    estimates = {}
    chosen = presets._choose("largest", list(times), 500.0, estimates, measure)
    assert chosen == "small" and measured == ["tiny", "small", "medium"]
    assert estimates["large"]["skipped"].startswith("not measured")
