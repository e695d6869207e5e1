"""A full disk while a checkpoint is written: a message that says so, no torn ``.partial``, the last good file kept.

The disk is real: a 512 KiB tmpfs mounted for the test (root can mount one here and in CI).
Where mounting is not allowed, the tests skip and say why.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
import torch

from utils.training import checkpoint

TINY_DISK = "512k"


@pytest.fixture
def tiny_disk(tmp_path):
    mount_point = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TINY_DISK}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_keeps_the_previous_checkpoint_and_removes_the_partial_file(tiny_disk):
    path = tiny_disk / checkpoint.CHECKPOINT_FILE
    checkpoint.save_checkpoint(path, {"model": {"w": torch.ones(10)}})
    before = path.read_bytes()
    with pytest.raises(
        OSError, match=r"^\[Errno 28\] the disk is full: could not write the checkpoint .*last\.pt"
    ) as err:
        checkpoint.save_checkpoint(path, {"model": {"w": torch.zeros(1_000_000)}})  # 4 MB into 512 KiB
    assert "the previous one is kept" in str(err.value)
    assert path.read_bytes() == before  # the last good checkpoint, byte for byte
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["last.pt"]  # no last.pt.partial left behind


def test_a_full_disk_on_the_first_checkpoint_says_none_existed(tiny_disk):
    path = tiny_disk / "sub" / checkpoint.CHECKPOINT_FILE
    with pytest.raises(OSError, match="no earlier checkpoint existed"):
        checkpoint.save_checkpoint(path, {"model": {"w": torch.zeros(1_000_000)}})
    assert list(path.parent.iterdir()) == []


def test_training_into_a_full_disk_stops_with_the_disk_full_message(tiny_disk, tiny_gpt):
    from utils import tier3_training_utilities as tier3

    model, config = tiny_gpt
    padding = torch.zeros(120_000)  # fill most of the disk, so the first last.pt cannot fit
    torch.save(padding, tiny_disk / "other-data.pt")
    with pytest.raises(OSError, match="the disk is full: could not write the checkpoint"):
        tier3.test_fine_tuning(
            model, config, max_steps=2, batch_size=2, checkpoint_dir=str(tiny_disk / "ckpt"), progress=False
        )
    assert not list(Path(tiny_disk / "ckpt").glob("*.partial"))
