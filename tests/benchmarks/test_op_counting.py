"""``benchmarks.counting.OpCounter``: each counting rule on small hand-made functions
(counts are exact, so every test asserts equality)."""

import numpy as np
import pytest
import torch

from benchmarks.counting import OpCounter, count_ops


def counts(fn, host=()):
    with OpCounter(host=host) as c:
        fn()
    return c.kernel_ops, c.syncs


@pytest.fixture
def x():
    return torch.arange(24.0).reshape(4, 6)


@pytest.mark.parametrize(
    "view",
    [
        lambda x: x.view(-1),
        lambda x: x.reshape(2, 12),  # contiguous: a view
        lambda x: x.flatten(),
        lambda x: x.t(),
        lambda x: x.transpose(0, 1),
        lambda x: x.permute(1, 0),
        lambda x: x[0],
        lambda x: x[:, 1:],
        lambda x: x[None],
        lambda x: x.unsqueeze(0).squeeze(0),
        lambda x: x[:, :1].expand(4, 6),
        lambda x: x.as_strided((2, 2), (1, 1)),
        lambda x: x.split(2),
        lambda x: x.chunk(3, dim=1),
        lambda x: x.unbind(),
        lambda x: x.narrow(1, 0, 2),
        lambda x: x.detach(),
        lambda x: x.shape[0] + x.size(1) + len(x) + x.numel(),
        lambda x: x.unsqueeze_(0).squeeze_(0),
    ],
)
def test_views_and_metadata_launch_no_kernel(x, view):
    assert counts(lambda: view(x)) == (0, 0)


def test_allocations_launch_no_kernel_fills_do(x):
    assert counts(lambda: torch.empty(5, device=x.device)) == (0, 0)
    assert counts(lambda: torch.empty_like(x)) == (0, 0)
    assert counts(lambda: x.new_empty(3)) == (0, 0)
    assert counts(lambda: torch.zeros(5, device=x.device)) == (1, 0)
    assert counts(lambda: torch.full((2,), 3.0, device=x.device)) == (1, 0)
    assert counts(lambda: torch.arange(5, device=x.device)) == (1, 0)
    assert counts(lambda: torch.zeros_like(x)) == (1, 0)


def test_operations_with_empty_outputs_launch_nothing(x):
    assert counts(lambda: torch.zeros(0, 4, device=x.device)) == (0, 0)
    assert counts(lambda: x[:0] + 1) == (0, 0)
    assert counts(lambda: torch.cat([x[:0], x[:0]])) == (0, 0)
    assert counts(lambda: x[:0].sum()) == (1, 0)  # the sum of nothing is a 0-dim zero: written


def test_computing_operations_are_one_kernel_each(x):
    assert counts(lambda: x + 1) == (1, 0)
    assert counts(lambda: x.t().reshape(-1)) == (1, 0)  # not contiguous: a copy, then a view
    assert counts(lambda: x.t().contiguous()) == (1, 0)
    assert counts(lambda: x.contiguous()) == (0, 0)
    assert counts(lambda: (x * 2).sigmoid().sum(1)) == (3, 0)
    assert counts(lambda: x.sort(dim=1)) == (1, 0)
    assert counts(lambda: x.float()) == (0, 0)  # already float32: nothing
    assert counts(lambda: x.long()) == (1, 0)
    with OpCounter() as c:
        (x @ x.t()).max(dim=0)
    assert dict(c.by_op) == {"mm": 1, "max.dim": 1} and c.syncs == 0


def test_bool_mask_indexing_syncs(x):
    m = x > 5
    assert counts(lambda: x[m]) == (1, 1)
    assert counts(lambda: x.masked_select(m)) == (1, 1)
    assert counts(lambda: x[x > 100]) == (
        2,
        1,
    )  # gt, then an index that finds nothing: still a sync
    assert counts(lambda: x[:0][m[:0]]) == (0, 0)  # an empty mask: nothing to read back
    y = x.clone()
    # the scalar is made on the device (one fill), index_put_ with a bool index syncs
    with OpCounter() as c:
        y[m] = 0.0
    assert (c.kernel_ops, c.syncs) == (2, 1) and c.sync_ops == {"index_put_ with a bool index": 1}
    idx = torch.tensor([0, 2])
    assert counts(lambda: x[idx], host=[idx]) == (1, 1)  # an index made on the host: copied over
    dev_idx = idx.clone()
    assert counts(lambda: x[dev_idx]) == (1, 0)  # an integer index on the device: no sync
    assert counts(lambda: x.index_select(0, dev_idx)) == (1, 0)


def test_nonzero_syncs(x):
    m = x > 5
    with OpCounter() as c:
        x.nonzero()
    assert (
        (c.kernel_ops, c.syncs) == (1, 1)
        and c.by_op == {"nonzero": 1}
        and c.sync_ops == {"nonzero": 1}
    )
    assert counts(lambda: torch.argwhere(m)) == (1, 1)
    assert counts(lambda: torch.where(m)) == (1, 1)
    assert counts(lambda: m.nonzero(as_tuple=True)) == (1, 1)
    assert counts(lambda: torch.where(m, x, -x)) == (2, 0)  # the three-argument where: no sync
    assert counts(lambda: torch.where(m, x, 0.0)) == (
        2,
        0,
    )  # 0.0 made on the device (scalar_tensor)
    assert counts(lambda: x[:0].nonzero()) == (0, 0)


def test_python_scalars_of_device_tensors_sync(x):
    with OpCounter() as c:
        int(x.sum())
    assert (c.kernel_ops, c.syncs) == (1, 1) and c.sync_ops == {"_local_scalar_dense": 1}
    assert counts(lambda: x.sum().item()) == (1, 1)
    assert counts(lambda: float(x.max())) == (1, 1)
    assert counts(lambda: bool(x.any())) == (1, 1)
    assert counts(lambda: 1 if (x > 3).all() else 0) == (2, 1)
    assert counts(lambda: x[1, 2].item()) == (0, 1)  # a view, then the copy: no kernel
    assert counts(lambda: [int(v) for v in x[0, :3]]) == (0, 3)
    assert counts(lambda: x[: int(x[0, 3])]) == (0, 1)  # a tensor bound of a slice


def test_copies_to_the_host_sync_once(x):
    with OpCounter() as c:
        x.tolist()
    assert (c.kernel_ops, c.syncs) == (0, 1) and c.sync_ops == {"Tensor.tolist": 1}
    assert counts(lambda: x.cpu()) == (0, 1)
    assert counts(lambda: x.cpu().tolist()) == (0, 1)
    assert counts(lambda: x.cpu().numpy()) == (0, 1)
    assert counts(lambda: x.numpy()) == (0, 1)
    assert counts(lambda: np.asarray(x)) == (0, 1)
    assert counts(lambda: x[:0].tolist()) == (0, 0)
    assert counts(lambda: x.cpu().cpu()) == (0, 1)  # the second is the host copy itself
    assert counts(lambda: x.to("cpu").numpy()) == (0, 1)  # the string "cpu" names the host
    with OpCounter() as c:
        h = x.to(device="cpu", dtype=torch.uint8)
        h.numpy()
    assert (c.kernel_ops, c.syncs) == (0, 1) and c.is_host(h) and h.dtype == torch.uint8
    assert counts(lambda: x.to(x.device)) == (0, 0)  # a torch.device: the counted code's device
    assert counts(lambda: x.to(x.device, torch.float64)) == (1, 0)
    assert counts(lambda: torch.zeros(3, device="cpu").tolist()) == (0, 0)
    # what the host computes on its copy is neither a kernel nor a sync
    with OpCounter() as c:
        h = x.cpu()
        (h * 2).sum().item()
        h.tolist()
        h.nonzero()
    assert (c.kernel_ops, c.syncs) == (0, 1) and c.host_ops == {
        "mul.Tensor": 1,
        "sum": 1,
        "_local_scalar_dense": 1,
        "nonzero": 1,
    }
    assert not c.is_host(x) and c.is_host(h)
    x.tolist()  # the patches are gone after the block: no error, nothing counted
    assert c.syncs == 1


def test_host_data_copied_to_the_device_syncs(x):
    with OpCounter() as c:
        torch.tensor([1, 2], device=x.device)
    assert (c.kernel_ops, c.syncs) == (0, 1) and c.sync_ops == {
        "host-to-device copy (torch.tensor(..., device=))": 1
    }
    assert counts(lambda: torch.as_tensor([1.0, 2.0], device=x.device)) == (0, 1)
    assert counts(lambda: x.new_tensor([1, 2])) == (0, 1)
    assert counts(lambda: torch.tensor([1]).new_tensor([2, 3])) == (
        0,
        0,
    )  # like a host tensor: on the host
    assert counts(lambda: torch.is_nonzero(x[1, 1:2])) == (0, 1)
    assert counts(lambda: torch.tensor(3.0, device=x.device)) == (0, 1)
    assert counts(lambda: torch.tensor([], device=x.device)) == (0, 0)
    # host data that stays on the host: nothing; moved to the device: one copy
    assert counts(lambda: torch.tensor([1, 2])) == (0, 0)
    assert counts(lambda: torch.tensor([1, 2]).to(x.device)) == (0, 1)
    assert counts(lambda: torch.zeros(3).to(device=x.device)) == (0, 1)
    assert counts(lambda: torch.tensor([1, 2]).to(torch.float64)) == (0, 0)  # a cast on the host
    assert counts(lambda: torch.tensor([1, 2]).to(tensor=x)) == (0, 1)
    arr = np.arange(6)
    assert counts(lambda: torch.from_numpy(arr)) == (0, 0)
    assert counts(lambda: torch.from_numpy(arr).to(dtype=torch.uint8, device=x.device)) == (0, 1)
    assert counts(lambda: torch.as_tensor(x)) == (0, 0)  # a device tensor: itself
    # a 0-dim host tensor is a kernel argument; a host tensor of one or more dims is copied
    assert counts(lambda: x * torch.tensor(2.0)) == (1, 0)
    assert counts(lambda: x[torch.tensor([0, 1])]) == (1, 1)
    with OpCounter() as c:
        (torch.arange(5) * 2).sum().item()
    assert (c.kernel_ops, c.syncs) == (0, 0) and sum(c.host_ops.values()) == 4


def test_patched_methods_return_what_torch_returns(x):
    with OpCounter() as c:
        assert x.tolist() == x.detach().numpy().tolist()
        assert np.array_equal(x.numpy(), np.arange(24.0).reshape(4, 6))
        assert (
            torch.equal(x.cpu(), x)
            and torch.equal(x.to("cpu"), x)
            and x.to(torch.int32).dtype == torch.int32
        )
        assert torch.equal(x.new_tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]))
        assert torch.tensor([1, 2], device=x.device).tolist() == [1, 2] and torch.zeros(
            2
        ).tolist() == [0.0, 0.0]
        y = x.clone()
        y[0] = 7.0
        assert y[0, 3] == 7.0
    assert c.syncs > 0


def test_images_declared_on_the_host_are_copied_once():
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    with OpCounter(host=[img]) as c:
        y = img.to(torch.device("cpu")).float() / 255  # as a model's .to(self.device)
    assert (c.kernel_ops, c.syncs) == (2, 1) and c.sync_ops == {
        "host-to-device copy (Tensor.to)": 1
    }
    assert not c.is_host(y) and c.is_host(img)


def test_unique_bincount_and_repeat_interleave_sync():
    i = torch.tensor([0, 2, 2, 3])
    for fn in (
        lambda: torch.unique(i),
        lambda: i.unique(return_inverse=True),
        lambda: torch.unique_consecutive(i),
        lambda: torch.bincount(i),
        lambda: torch.repeat_interleave(i),
    ):
        assert counts(fn) == (1, 1)
    assert counts(lambda: i.repeat_interleave(i)) == (2, 1)  # the indices, then index_select
    assert counts(lambda: torch.repeat_interleave(i, output_size=7)) == (1, 0)
    assert counts(lambda: i.repeat_interleave(2)) == (1, 0)  # an int count: a copy, no sync
    assert counts(lambda: torch.equal(i, i)) == (1, 1)
    assert counts(lambda: torch.equal(i[:0], i[:0])) == (0, 0)


def test_fills_with_a_device_tensor_value_sync(x):
    m = x > 5
    assert counts(lambda: x.masked_fill(m, x.max())) == (2, 1)  # max; masked_fill reads the value
    assert counts(lambda: x.masked_fill(m, 0.5)) == (1, 0)
    assert counts(lambda: x.clone().fill_(x[0, 0])) == (2, 1)
    assert counts(lambda: x.masked_fill(m, torch.tensor(0.5))) == (1, 0)  # a host scalar
    y = x.clone()
    with OpCounter() as c:
        y[0] = 0.5  # the scalar made on the device, copied into the row
    assert (c.kernel_ops, c.syncs) == (2, 0)
    v = x[1, 1]
    with OpCounter() as c:
        y[1:3, 2:4] = (
            v  # an assignment of a device scalar: the CPU fills, a GPU copies (no .item())
        )
    assert (c.kernel_ops, c.syncs) == (1, 0)
    with OpCounter() as c:
        y[1:3, 2:4].fill_(v)  # fill_ itself reads the value
    assert (c.kernel_ops, c.syncs) == (1, 1)
    assert counts(lambda: x.masked_fill(m, 0.5)) == (1, 0)


def test_indexing_with_a_python_list_copies_it_to_the_device(x):
    with OpCounter() as c:
        x[:, [0, 2, 3]]
    assert (c.kernel_ops, c.syncs) == (1, 1) and c.sync_ops == {
        "host-to-device copy (lift_fresh)": 1
    }
    assert counts(lambda: x[:, []]) == (0, 0)


def test_the_state_of_a_call_ends_with_it(x):
    """Factories and assignments leave no state behind: what follows counts as on its own."""
    y = x.clone()
    with OpCounter() as c:
        x.new_tensor([1, 2])  # a factory with the device: one copy
        y[0] = 0.5  # then a Python number assigned: made on the device (a fill), copied in
    assert (c.kernel_ops, c.syncs) == (2, 1)
    with OpCounter() as c:
        y[0] = 0.5
        y.fill_(x[0, 0])  # after the assignment, fill_ reads its device value again
    assert (c.kernel_ops, c.syncs) == (3, 1)
    with OpCounter() as c:
        torch.tensor([1.0, 2.0])  # a host factory, then an operation on device tensors
        x + 1
    assert (c.kernel_ops, c.syncs) == (1, 0)


def test_backward_is_counted():
    x = torch.arange(6.0).requires_grad_()
    with OpCounter() as c:
        (x * 2).sum().backward()
    # forward mul, sum; backward ones_like (the seed), mul (the gradient of x * 2)
    assert (c.kernel_ops, c.syncs) == (4, 0) and c.by_op == {
        "mul.Tensor": 2,
        "sum": 1,
        "ones_like": 1,
    }


def test_counts_are_deterministic_and_patches_restored(x):
    originals = (
        torch.tensor,
        torch.zeros,
        torch.from_numpy,
        torch.Tensor.tolist,
        torch.Tensor.to,
        torch.Tensor.cpu,
    )

    def fn():
        m = x > 3
        v = x[m]
        idx = m.nonzero()
        return v.sum().item(), idx.tolist(), torch.tensor([1.0], device=x.device)

    a = count_ops(fn)[1]
    b = count_ops(fn)[1]
    assert repr(a) == "OpCounter(kernel_ops=4, syncs=5)"
    assert (a.by_op, a.sync_ops) == (b.by_op, b.sync_ops) and (a.kernel_ops, a.syncs) == (4, 5)
    with pytest.raises(ValueError):
        with OpCounter():
            raise ValueError
    assert (
        torch.tensor,
        torch.zeros,
        torch.from_numpy,
        torch.Tensor.tolist,
        torch.Tensor.to,
        torch.Tensor.cpu,
    ) == originals
    assert "tolist" not in torch.Tensor.__dict__ and "__setitem__" not in torch.Tensor.__dict__
    y = x.clone()
    y[0] = 1.0  # item assignment works again without the counter
    assert y[0, 0] == 1.0


def test_nested_counters_both_count(x):
    with OpCounter() as outer:
        x + 1
        with OpCounter() as inner:
            x.nonzero()
            x.tolist()
    assert (inner.kernel_ops, inner.syncs) == (1, 2)
    assert outer.kernel_ops == 2 and outer.sync_ops["nonzero"] == 1
