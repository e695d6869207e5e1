"""The model card's load snippet runs for the configs it is written for, and says plainly when it cannot.

minGPT's ``CfgNode`` has ``to_dict`` but no ``from_dict``: the card once wrote ``CfgNode.from_dict(...)``,
which fails. The classes live at this module's top level so that the snippet can import them, as a
user's own module would be imported.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from utils.training.export import export_state_dict


class CfgNode:
    """minGPT's kind of config: attributes set from keyword arguments, ``to_dict`` back, no ``from_dict``."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def to_dict(self):
        return dict(self.__dict__)


class FixedConfig:
    """A config that can describe itself but cannot be rebuilt from that description."""

    def __init__(self):
        self.vocab_size, self.n_embd, self.max_seq_len = 64, 16, 16

    def to_dict(self):
        return {"vocab_size": self.vocab_size, "n_embd": self.n_embd, "max_seq_len": self.max_seq_len}


class TinyLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size)

    def forward(self, input_ids):
        return self.head(self.embed(input_ids))


def _card_code(export_dir) -> str:
    card = (export_dir / "README.md").read_text()
    return card.split("```python\n", 1)[1].split("```", 1)[0]


def test_a_config_with_to_dict_but_no_from_dict_is_rebuilt_by_its_constructor(tmp_path, monkeypatch):
    torch.manual_seed(0)
    config = CfgNode(vocab_size=64, n_embd=16, max_seq_len=16)
    model = TinyLM(config)
    export_state_dict(model, tmp_path / "export", config=config)
    code = _card_code(tmp_path / "export")
    assert "CfgNode(**json.load(f))" in code and "from_dict" not in code
    monkeypatch.chdir(tmp_path / "export")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # runs as the user would run it
    ids = torch.randint(0, 64, (2, 8))
    torch.testing.assert_close(namespace["model"](ids), model(ids), atol=1e-6, rtol=0)


def test_a_config_that_cannot_be_rebuilt_is_said_plainly_and_the_snippet_still_runs(tmp_path, monkeypatch):
    config = FixedConfig()
    export_state_dict(TinyLM(config), tmp_path / "export", config=config)
    code = _card_code(tmp_path / "export")
    assert "FixedConfig has no from_dict and does not take these keys" in code
    assert "FixedConfig.from_dict" not in code and "FixedConfig(**" not in code
    monkeypatch.chdir(tmp_path / "export")
    head = code.split("model = ")[0]  # the config part runs; the model line is the user's to finish
    namespace: dict = {}
    exec(compile(head, "README.md", "exec"), namespace)
    assert namespace["config"] == config.to_dict()


@pytest.mark.parametrize("config", [CfgNode(a=1), FixedConfig()], ids=["kwargs", "fixed"])
def test_the_card_never_writes_a_method_the_config_lacks(tmp_path, config):
    from utils.training import model_card

    _, expression = model_card._config_source(config)
    assert ".from_dict(" not in expression  # neither class has one
    assert callable(getattr(CfgNode, "to_dict", None)) and not hasattr(CfgNode, "from_dict")
