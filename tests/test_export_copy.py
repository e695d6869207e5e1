"""The export's reload check never trusts a copy that still runs the user's modules.

When a model cannot be rebuilt from its config, the export reloads its file into a NaN-filled copy.
A minGPT-style model (``Block.mlpf`` a lambda over the original's MLP) copies into a twin that
still calls the original: the reload would then "match" without testing the file. The copy must be
proved independent, or the check says there was no model to reload into; the user's model is never
filled with NaN.
"""

from __future__ import annotations

import torch
from outside_models import MinGPT, MinGPTConfig

from utils.training.export import export_state_dict


class MinGPTWithoutConfigRebuild(MinGPT):
    """minGPT whose class cannot be built from its config alone (as with many hand-built models)."""

    def __init__(self, config: MinGPTConfig, extra: int) -> None:
        super().__init__(config)
        self.extra = extra


def test_a_copy_that_shares_modules_is_never_the_reload_target(tmp_path):
    torch.manual_seed(0)
    config = MinGPTConfig()
    model = MinGPTWithoutConfigRebuild(config, extra=1).eval()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    result = export_state_dict(model, tmp_path / "export", config=config)
    parity = result["parity"]
    assert parity["status"] == "fail" and parity["built_from"] == "copy"
    assert "no model to reload into could be built" in parity["reason"]
    for name, tensor in model.state_dict().items():  # the user's model: not one NaN, not one change
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)
