"""An export of a model that FSDP left sharded: a clear message saying how to gather it, and the way that works."""

from __future__ import annotations

import fsdp_worker
import pytest

from utils.training import fsdp
from utils.training.export import export_state_dict

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # see conftest


def test_a_sharded_model_is_refused_with_how_to_gather_it_and_the_gathered_copy_exports(tmp_path):
    results, model = fsdp_worker.train(batch_size=4, strategy="fsdp")
    assert fsdp.is_sharded(model)
    with pytest.raises(ValueError, match=r"still FSDP-sharded .*full_state_dict\(model\)"):
        export_state_dict(model, tmp_path / "refused", config=results.get("config"))
    assert not (tmp_path / "refused").exists()  # refused before anything is written
    plain, config = fsdp_worker.build_model()
    plain.load_state_dict(fsdp.full_state_dict(model), strict=True)
    exported = export_state_dict(plain, tmp_path / "export", config=config)
    assert exported["parity"]["status"] == "ok"
