"""A private copy of the user's model to train, proved independent of it, or the model itself, saved and restored.

``copy.deepcopy`` does not always give a private copy. A module may keep a closure
over its own submodules: karpathy's minGPT sets ``Block.mlpf = lambda x: ...`` over
``m = self.mlp``, and deepcopy copies functions by reference, so the copy's
``mlpf`` still runs the original MLP, in the original's train mode with its
dropout, while the copy's own MLP never trains and backward writes ``.grad``
into the user's parameters. ``private_copy`` copies, then proves the copy
independent:

- no parameter or buffer of the copy is one of the model's, or shares its storage;
- a probe forward of the copy (eval mode, two tokens of id 0) calls none of the
  model's modules, and its backward leaves every parameter of the model without
  a gradient (the model's own ``.grad`` is put back afterwards).

When that cannot be proved (or deepcopy fails), it warns and yields the model
itself, having saved its weights, buffers, ``requires_grad`` flags, train/eval
modes and gradients, and restores all of them afterwards.

Example:
    >>> with private_copy(model, "model") as trainee:
    ...     results = loop.train(trainee, config, settings)
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from utils.model_helpers import make_forward_fn, model_device, model_mode, output_tensors, preserved_grads


@contextlib.contextmanager
def private_copy(model: nn.Module, name: str = "model", *, probe_len: int = 2) -> Iterator[nn.Module]:
    """Yield a copy of ``model`` that shares nothing with it, or ``model`` itself under a saved-and-restored state.

    Args:
        model: the user's module; it is left as it was.
        name: how messages name it ("model", "the baseline module").
        probe_len: tokens in the probe forward that proves the copy independent.

    Yields:
        The module to train: the private copy, or (with a warning saying why) ``model`` itself.
    """
    twin, reason = independent_copy(model, probe_len)
    if twin is not None:
        yield twin
        return
    warnings.warn(
        f"{name}: a copy of it would not be independent ({reason}), so training the copy would change yours. "
        f"Training your {type(model).__name__} itself instead; its weights, buffers, requires_grad flags, "
        "train/eval modes and gradients are restored afterwards.",
        stacklevel=3,
    )
    saved = SavedState.of(model)
    for param in model.parameters():
        param.grad = None  # training starts clean; your gradients come back with the rest
    try:
        yield model
    finally:
        saved.restore()


def independent_copy(model: nn.Module, probe_len: int = 2) -> tuple[nn.Module | None, str]:
    """A deep copy of ``model`` proved independent of it, as ``(copy, '')``; else ``(None, why not)``.

    For a caller that must never fall back to the model itself (an export's reload target, say).
    """
    try:
        twin = copy.deepcopy(model)
    except Exception as err:  # a module holding a lock, a file or a generator, say
        return None, f"copy.deepcopy failed with {type(err).__name__}: {err}"
    shared = _shared_tensors(model, twin)
    if shared:
        return None, f"{len(shared)} of the copy's parameters and buffers are still yours (e.g. {shared[0]!r})"
    reason = _probe_reaches_model(model, twin, probe_len)
    for param in twin.parameters():
        param.grad = None  # the copy starts clean: no probe gradient, none copied from yours
    return (None, reason) if reason else (twin, "")


def _shared_tensors(model: nn.Module, twin: nn.Module) -> list[str]:
    """Names of the copy's parameters and buffers that are the model's own tensors or use its storage."""
    originals = [*model.parameters(), *model.buffers()]
    ids = {id(t) for t in originals}
    storages = {_storage_key(t) for t in originals} - {None}
    tensors = [*twin.named_parameters(remove_duplicate=False), *twin.named_buffers(remove_duplicate=False)]
    return [name for name, t in tensors if id(t) in ids or _storage_key(t) in storages]


def _storage_key(tensor: torch.Tensor) -> tuple[str, int] | None:
    if tensor.numel() == 0 or tensor.device.type == "meta":
        return None
    return str(tensor.device), tensor.untyped_storage().data_ptr()


def _probe_reaches_model(model: nn.Module, twin: nn.Module, probe_len: int) -> str:
    """Why a probe forward and backward of the copy touches the model (its modules, its gradients), or ''."""
    called: list[str] = []
    names = {id(m): n or type(m).__name__ for n, m in model.named_modules()}
    hooks = [m.register_forward_pre_hook(lambda m, args: called.append(names[id(m)])) for m in model.modules()]
    try:
        with preserved_grads(model):
            _probe_forward_backward(twin, probe_len)
            with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
    finally:
        for hook in hooks:
            hook.remove()
    if called:
        modules = list(dict.fromkeys(called))
        return (
            f"a forward pass of the copy runs {len(modules)} of your modules (e.g. {modules[0]!r}): a closure "
            "such as a lambda attribute still refers to them"
        )
    if with_grad:
        return f"a backward pass of the copy gives {len(with_grad)} of your parameters a .grad (e.g. {with_grad[0]!r})"
    return ""


def _probe_forward_backward(twin: nn.Module, probe_len: int) -> None:
    """One forward (eval mode, token id 0) and a backward of the sum of its outputs, if the model allows."""
    input_ids = torch.zeros(1, probe_len, dtype=torch.long, device=model_device(twin))
    devices = [input_ids.device] if input_ids.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), model_mode(twin, training=False), torch.enable_grad():
            outputs = output_tensors(make_forward_fn(twin)(input_ids))
            loss = sum(t.float().sum() for t in outputs if t.requires_grad)
            if isinstance(loss, torch.Tensor):
                loss.backward()
    except Exception:  # the probe cannot run this model: what it saw so far stands, and training shows the error
        return


@dataclass
class SavedState:
    """Everything training may change in a module, saved to be put back: ``SavedState.of(model).restore()``.

    Per parameter and buffer slot: the original tensor object and a clone of its values (so a
    move to another device or dtype is undone too); per parameter its ``requires_grad`` and a
    clone of its ``.grad``; per module its train/eval mode.
    """

    slots: list[tuple[dict, str, torch.Tensor, torch.Tensor]]
    flags: list[tuple[torch.Tensor, bool, torch.Tensor | None]]
    modes: list[tuple[nn.Module, bool]]

    @classmethod
    def of(cls, model: nn.Module) -> SavedState:
        clones: dict[int, torch.Tensor] = {}  # tied tensors are cloned once

        def clone(t: torch.Tensor) -> torch.Tensor:
            return clones.setdefault(id(t), t.detach().clone())

        slots, flags = [], {}
        for module in model.modules():
            for table in (module._parameters, module._buffers):
                for key, tensor in table.items():
                    if tensor is not None:
                        slots.append((table, key, tensor, clone(tensor)))
        for param in model.parameters():
            grad = param.grad.detach().clone() if param.grad is not None else None
            flags[id(param)] = (param, param.requires_grad, grad)
        return cls(slots, list(flags.values()), [(m, m.training) for m in model.modules()])

    def restore(self) -> None:
        with torch.no_grad():
            for table, key, original, values in self.slots:
                table[key] = original
                original.data = values
        for param, requires_grad, grad in self.flags:
            param.requires_grad_(requires_grad)
            param.grad = grad
        for module, training in self.modes:
            module.training = training


__all__ = ["SavedState", "independent_copy", "private_copy"]
