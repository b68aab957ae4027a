"""Exact counts of the kernel launches and host-device synchronizations a piece of PyTorch code
would make on a GPU, measured on any device (``OpCounter``, a ``TorchDispatchMode``).

Small-batch GPU inference is bound by kernel launches and by the points where the host waits
for the device; both are properties of the sequence of ATen operations, so they can be counted
on a CPU-only machine, exactly and deterministically (same code and inputs, same counts)::

    with OpCounter() as c:
        fn()
    c.kernel_ops, c.syncs, c.by_op, c.sync_ops

The counter sees every ATen operation below autograd (forward and backward, also from
TorchScript), after PyTorch's composite operations are decomposed; an operation that calls
other operations inside its own kernel is one operation. Rules, with the GPU they model:

**Device and host tensors.** Every tensor is taken to live on the device (the counted code's
model and inputs are on the GPU) except the *host* tensors, which a GPU run keeps in host
memory as well: tensors created by a factory called without ``device=`` (``torch.tensor``,
``as_tensor``, ``asarray``, ``from_numpy``, ``zeros``, ``ones``, ``empty``, ``full``,
``arange``, ``linspace``, ``eye``, ``rand``, ``randn``, ``randint``, ``randperm``,
``Tensor.new_tensor`` of a host tensor), results of ``Tensor.cpu()``, tensors passed as
``OpCounter(host=...)``, and results of operations whose tensor inputs are all host tensors.
A ``device=`` given as a ``torch.device`` object counts as the device even where it is the CPU
(``x.device`` on this machine: the counted code's device *is* the CPU); the *string* ``"cpu"``
names the host (``torch.zeros(3, device="cpu")`` is a host tensor, ``t.to("cpu")`` a copy to the
host like ``t.cpu()``). Host operations run on the CPU in a GPU run
too: they are neither kernels nor syncs (counted apart, in ``host_ops``).

**Kernel ops** (``kernel_ops``, per operation in ``by_op``): every operation on device tensors,
except

- views and metadata: every operation whose schema returns an alias (``view``, ``reshape``
  as a view, ``as_strided``, ``expand``, ``t``, ``transpose``, ``permute``, ``slice``,
  ``select``, ``unsqueeze``, ``squeeze``, ``detach``, ``alias``, ``split``, ``unbind``,
  ``chunk``, ...), ``_unsafe_view``, ``_reshape_alias``, ``sym_size`` and the other ``sym_*``;
- allocations (``empty``, ``empty_strided``, ``empty_like``, ``new_empty``, ``resize_``): the
  caching allocator launches no kernel;
- copies between host and device (``_local_scalar_dense``, ``.tolist()``, ``.cpu()``,
  ``torch.tensor(data, device=)``): a ``cudaMemcpy``, not a kernel; they are syncs;
- operations whose tensor outputs are all empty (CUDA kernels return before launching when
  there is nothing to compute), unless the operation syncs on a non-empty input (``nonzero``
  of an all-false mask still counts).

**Syncs** (``syncs``, per cause in ``sync_ops``), each also a kernel op where it computes:

- ``nonzero`` (and ``argwhere``, ``torch.where(cond)``), ``masked_select``, ``unique``
  (``_unique``, ``_unique2``, ``unique_dim``, ``unique_consecutive``), ``bincount``, ``equal``:
  the result's size or value is read on the host;
- ``repeat_interleave`` without ``output_size``;
- indexing with a bool or uint8 index (``index.Tensor``, ``index_put``/``index_put_``:
  ``x[mask]``, ``x[mask] = v``): a ``nonzero`` inside;
- ``_local_scalar_dense``: ``.item()``, ``int()``, ``float()``, ``bool()``, ``if t:`` of a
  device tensor (a copy, no kernel);
- ``Tensor.tolist()``, ``Tensor.cpu()``, ``Tensor.to("cpu")``, ``Tensor.numpy()`` of a device
  tensor (copies to the host; ``.cpu().numpy()`` is one sync);
- copies from the host to the device: ``torch.tensor(data, device=...)`` and the other
  factories of host data with ``device=`` (``aten.lift_fresh``, a pageable ``cudaMemcpy``,
  which waits for the stream), ``Tensor.to(device)`` of a host tensor, and a device operation
  that reads a host tensor of one or more dimensions (an index tensor made on the host, a
  ``copy_`` between host and device); a 0-dim host tensor in a device operation is passed as
  a scalar argument and is no sync;
- ``masked_fill``/``fill_`` with a 0-dim *device* tensor as the value (ATen's CUDA kernels read
  it with ``.item()``: pytorch/pytorch#109115, #190512), except in an assignment ``x[i] = t``
  (the CPU writes ``t`` with ``fill_``, a GPU with ``copy_``).

A ``lift_fresh`` outside the factories above is PyTorch making a Python number a 0-dim tensor:
no kernel where it is a kernel argument (``x.masked_fill(m, t)`` with ``t`` such a number), one
kernel (the ``scalar_tensor`` fill a GPU run makes on the device) where it is the value of an
assignment ``x[i] = 0.5`` / ``x[mask] = 0.5``; a ``lift_fresh`` of more dimensions outside the
factories is a copy of host data (a sync): indexing with a Python list, ``x[:, [0, 2]]``, is one.

The counter models a GPU run while the counted code runs on the CPU (its purpose: counting
without a GPU; the counts of this project are taken that way). On CUDA tensors it applies the
same rules, which are then approximate and have not been checked on a GPU: a tensor on the CPU
is still a device tensor unless a rule above makes it a host tensor.

What the counter cannot see: kernels launched inside one ATen operation (cuDNN's several
kernels of a convolution, the ``nonzero`` inside bool indexing: one op each), code that calls
the factories through names bound before the counter started (``from torch import zeros``),
and syncs made by C++ code outside the operations listed (none in solo_d2 or AdelaiDet's
SOLOv2 that we know of).
"""

import contextlib
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

__all__ = ["OpCounter", "count_ops"]

# operations that only make tensor metadata or allocate: no kernel
# (on top of ``OpOverload.is_view``)
_NO_KERNEL = {
    "aten::_unsafe_view",
    "aten::_reshape_alias",
    "aten::sym_size",
    "aten::sym_stride",
    "aten::sym_numel",
    "aten::sym_storage_offset",
    "aten::is_same_size",
    "aten::size",
    "aten::stride",
    "aten::dim",
    "aten::empty",
    "aten::empty_strided",
    "aten::empty_like",
    "aten::new_empty",
    "aten::new_empty_strided",
    "aten::resize_",
    "aten::resize_as_",
    "aten::set_",
    "aten::_local_scalar_dense",
    "aten::lift_fresh",
    "aten::lift_fresh_copy",
    "aten::lift",
    # in-place metadata changes (their schema writes to the input, so ``is_view`` is False)
    "aten::squeeze_",
    "aten::unsqueeze_",
    "aten::t_",
    "aten::transpose_",
    "aten::swapdims_",
    "aten::swapaxes_",
    "aten::as_strided_",
    "aten::detach_",
}
# operations that always read a result back to the host (when their input is not empty)
_ALWAYS_SYNC = {
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::unique_dim_consecutive",
    "aten::bincount",
    "aten::equal",
    "aten::_local_scalar_dense",
}
_BOOL_INDEX_OPS = {
    "aten::index",
    "aten::index_put",
    "aten::index_put_",
    "aten::_index_put_impl_",
    "aten::_unsafe_index_put",
    "aten::_unsafe_index",
}
_LIFT = {"aten::lift_fresh", "aten::lift_fresh_copy", "aten::lift"}
_TENSOR_VALUE_SYNC = {"aten::masked_fill", "aten::masked_fill_", "aten::fill", "aten::fill_"}
# Assignments ``x[i] = v`` (``Tensor.__setitem__``, followed by the counter) run differently on the
# two devices: the CPU makes a Python number ``v`` a tensor by ``lift_fresh`` and writes a 0-dim
# ``v`` with ``fill_``; a GPU run makes the number on the device (``scalar_tensor``: one fill
# kernel) and writes with ``copy_`` (no ``.item()``, no sync). Outside assignments a ``lift_fresh``
# of a 0-dim tensor is a Python number that is a kernel argument on a GPU too (no kernel).

# torch factories of host data or of new tensors that take ``device=``
_FACTORIES = (
    "tensor",
    "as_tensor",
    "asarray",
    "from_numpy",
    "zeros",
    "ones",
    "empty",
    "full",
    "arange",
    "linspace",
    "logspace",
    "eye",
    "rand",
    "randn",
    "randint",
    "randperm",
    "scalar_tensor",
)
_ACTIVE = []  # the counters active now, innermost last (the patches serve the innermost)


def _names_host(device) -> bool:
    """Whether a ``device=`` argument names the host: the *string* ``"cpu"`` (``"cpu"`` written in
    the code); a ``torch.device`` object is the counted code's device, even where it is the CPU
    (``x.device`` on this machine)."""
    return isinstance(device, str) and device.split(":")[0] == "cpu"


def _tensors(tree):
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class OpCounter(TorchDispatchMode):
    """Counts kernel ops and syncs of the code run inside ``with OpCounter() as c:`` (see the
    module's docstring for the rules).

    Attributes: ``kernel_ops`` (int), ``syncs`` (int), ``by_op`` (``Counter`` of operation
    names, the kernel ops), ``sync_ops`` (``Counter`` of the syncs' causes), ``host_ops``
    (``Counter`` of the operations on host tensors, which count as neither).

    Args:
        host: tensors that exist before the block and live on the host in a GPU run (an image
            the model copies to the device, for example); every other tensor that exists
            before the block is a device tensor.
    """

    def __init__(self, host=()):
        super().__init__()
        self.by_op = Counter()
        self.sync_ops = Counter()
        self.host_ops = Counter()
        self._host = WeakTensorKeyDictionary()
        for t in host:
            self._host[t] = True
        self._setitem = 0  # depth of Tensor.__setitem__ calls
        self._factory = []  # stack: True inside a factory that makes host data (no device=)
        self._suspended = 0
        self._patches = None

    # ------------------------------------------------------------------ results
    @property
    def kernel_ops(self) -> int:
        return sum(self.by_op.values())

    @property
    def syncs(self) -> int:
        return sum(self.sync_ops.values())

    def __repr__(self):
        return f"OpCounter(kernel_ops={self.kernel_ops}, syncs={self.syncs})"

    def is_host(self, t) -> bool:
        """Whether tensor ``t`` is a host tensor (see the module's rules)."""
        return t in self._host

    # ------------------------------------------------------------------ dispatch
    def _sync(self, cause):
        self.sync_ops[cause] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._suspended:
            return out
        name = func._schema.name  # "aten::index" (the overload apart)
        short = func.name().split("::", 1)[1]  # "index.Tensor" (".default" left out)
        inputs = _tensors((args, kwargs))
        host_in = [t for t in inputs if t in self._host]
        in_factory = bool(self._factory) and self._factory[-1]
        if (
            (name in _LIFT and in_factory)
            or (inputs and len(host_in) == len(inputs))
            or (not inputs and in_factory)
        ):
            self.host_ops[short] += 1  # runs on the CPU in a GPU run too
            for t in _tensors(out):
                self._host[t] = True
            return out
        outputs = _tensors(out)
        nonempty_in = any(t.numel() for t in inputs)
        sync = None
        if name in _LIFT:
            if not nonempty_in:
                return out
            if self._factory:  # torch.tensor(data, device=...): a copy to the device
                self._sync("host-to-device copy (torch.tensor(..., device=))")
                return out
            if inputs[0].dim() == 0:  # a Python number made a tensor (see above _FACTORIES)
                if self._setitem > 0:
                    self.by_op["scalar_tensor"] += 1
                return out
            self._sync(f"host-to-device copy ({short})")
            return out
        if name in _ALWAYS_SYNC:
            if nonempty_in:
                sync = short
        elif name in _BOOL_INDEX_OPS:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) and i.numel()
                for i in indices
            ):
                sync = f"{short} with a bool index"
        elif name == "aten::repeat_interleave":
            if kwargs.get("output_size") is None and nonempty_in:
                sync = "repeat_interleave without output_size"
        elif name in _TENSOR_VALUE_SYNC:
            value = kwargs.get("value", args[-1] if len(args) > 1 else None)
            if (
                isinstance(value, torch.Tensor)
                and value.dim() == 0
                and value not in self._host
                and self._setitem == 0
            ):
                sync = f"{short} with a device tensor value (.item())"
        if sync is not None:
            self._sync(sync)
        if any(t.dim() > 0 and t.numel() for t in host_in):  # a host tensor read by a device op
            self._sync(f"host-device copy of a host tensor ({short})")
        if name in _NO_KERNEL or func.is_view:
            return out
        if outputs and not any(t.numel() for t in outputs) and sync is None:
            return out  # nothing to compute: no launch
        if not outputs and not nonempty_in:
            return out
        self.by_op[short] += 1
        return out

    # ------------------------------------------------------------------ Python-level patches
    @contextlib.contextmanager
    def suspended(self):
        """Operations inside are not counted (the counter's own bookkeeping)."""
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1

    def _install(self):
        counter = self
        orig = {}

        def factory(name, fn):
            def wrapper(*args, **kwargs):
                if _ACTIVE[-1] is not counter:
                    return fn(*args, **kwargs)
                data = args[0] if args else kwargs.get("data")
                if name in ("as_tensor", "asarray") and isinstance(data, torch.Tensor):
                    counter._factory.append(
                        False
                    )  # of a tensor: a move (or nothing), not host data
                else:
                    device = kwargs.get("device")
                    counter._factory.append(device is None or _names_host(device))
                try:
                    return fn(*args, **kwargs)
                finally:
                    counter._factory.pop()

            wrapper.__wrapped__ = fn
            return wrapper

        for name in _FACTORIES:
            fn = getattr(torch, name)
            orig[("torch", name)] = fn
            setattr(torch, name, factory(name, fn))

        def method(name):
            return getattr(torch.Tensor, name)

        t_tolist, t_cpu, t_numpy, t_to, t_new_tensor = (
            method(n) for n in ("tolist", "cpu", "numpy", "to", "new_tensor")
        )

        def tolist(self_):
            if _ACTIVE[-1] is counter and self_ not in counter._host and self_.numel():
                counter._sync("Tensor.tolist")
            with counter.suspended():
                return t_tolist(self_)

        def numpy(self_, *a, **k):
            if _ACTIVE[-1] is counter and self_ not in counter._host and self_.numel():
                counter._sync("Tensor.numpy")
            with counter.suspended():
                return t_numpy(self_, *a, **k)

        def cpu(self_, *a, **k):
            if self_ in counter._host:  # already on the host: .cpu() is the tensor itself
                return t_cpu(self_, *a, **k)
            if self_.numel():
                counter._sync("Tensor.cpu")
            with counter.suspended():
                out = t_cpu(self_, *a, **k)
                if (
                    out is self_
                ):  # on a CPU-only machine: a copy, so that the device tensor stays one
                    out = self_.clone()
            counter._host[out] = True
            return out

        def to(self_, *a, **k):
            if _ACTIVE[-1] is not counter:
                return t_to(self_, *a, **k)
            device = k.get(
                "device",
                next((x for x in a if isinstance(x, (str, torch.device, torch.Tensor))), None),
            )
            if device is None and isinstance(k.get("tensor"), torch.Tensor):  # .to(tensor=t)
                device = k["tensor"]
            if _names_host(device):  # .to("cpu"): as .cpu(), then the rest (a dtype) on the host
                return cpu(self_).to(
                    *[x for x in a if x is not device],
                    **{n: v for n, v in k.items() if n != "device"},
                )
            if (
                self_ not in counter._host or device is None
            ):  # on the device, or a dtype change on the host
                return t_to(self_, *a, **k)
            if self_.numel():
                counter._sync("host-to-device copy (Tensor.to)")
            with counter.suspended():
                out = t_to(self_, *a, **k)
                if out is self_:
                    out = self_.clone()
            return out  # a device tensor

        def new_tensor(self_, *a, **k):
            if _ACTIVE[-1] is not counter:
                return t_new_tensor(self_, *a, **k)
            device = k.get("device")
            counter._factory.append(
                (device is None and self_ in counter._host) or _names_host(device)
            )
            try:
                return t_new_tensor(self_, *a, **k)
            finally:
                counter._factory.pop()

        t_setitem = method("__setitem__")

        def setitem(self_, index, value):
            if _ACTIVE[-1] is not counter:
                return t_setitem(self_, index, value)
            counter._setitem += 1
            try:
                return t_setitem(self_, index, value)
            finally:
                counter._setitem -= 1

        def public_cpu(self_, *a, **k):
            if _ACTIVE[-1] is not counter:
                return t_cpu(self_, *a, **k)
            return cpu(self_, *a, **k)

        for name, fn in (
            ("tolist", tolist),
            ("numpy", numpy),
            ("cpu", public_cpu),
            ("to", to),
            ("new_tensor", new_tensor),
            ("__setitem__", setitem),
        ):
            orig[("Tensor", name)] = torch.Tensor.__dict__.get(name)
            setattr(torch.Tensor, name, fn)
        self._patches = orig

    def _uninstall(self):
        for (owner, name), fn in self._patches.items():
            if owner == "torch":
                setattr(torch, name, fn)
            elif fn is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, fn)
        self._patches = None

    def __enter__(self):
        _ACTIVE.append(self)
        self._install()
        try:
            return super().__enter__()
        except BaseException:
            self._uninstall()
            _ACTIVE.pop()
            raise

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._uninstall()
            _ACTIVE.pop()


def count_ops(fn, *args, host=(), **kwargs):
    """``(result, counter)``: ``fn(*args, **kwargs)`` run inside an :class:`OpCounter`."""
    with OpCounter(host=host) as c:
        out = fn(*args, **kwargs)
    return out, c
