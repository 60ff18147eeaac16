"""Every collective of the training loop runs on the device its backend needs.

NCCL rejects CPU tensors: a loop that all-reduces a CPU tensor crashes on the first
step of every multi-GPU run, while a Gloo test on CPUs passes.  These tests

* check that ``setup`` picks NCCL for a GPU model and that the collective device is
  then that GPU (Gloo: the CPU), with a faked CUDA / process-group layer;
* run the real training loop under a fake two-rank process group that records the
  device of every tensor handed to ``torch.distributed`` and refuses the object
  collectives (which choose their device implicitly), and assert each recorded device
  is ``distributed.collective_device()``;
* on a machine with a GPU, run the loop under a real (one-rank) NCCL group.
"""
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyscf")
pytest.importorskip("yaml")
import torch.distributed as dist  # noqa: E402

from qh_helpers import labelled_water, tiny_train_config  # noqa: E402


@pytest.fixture(scope="module")
def water(tmp_path_factory):
    return labelled_water(tmp_path_factory.mktemp("ddp_water"), 6, seed=5, scale=0.05, n_train=4)


def _config(**kw):
    return tiny_train_config(**kw)


class FakeGroup:
    """A two-rank process group in one process: the peer rank holds the same tensors.

    Records ``(op, device)`` of every tensor it is handed.
    """

    def __init__(self, backend="gloo", world=2):
        self.backend, self.world, self.calls = backend, world, []

    def install(self, monkeypatch):
        monkeypatch.setattr(dist, "is_available", lambda: True)
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: self.world)
        monkeypatch.setattr(dist, "get_backend", lambda group=None: self.backend)
        monkeypatch.setattr(dist, "all_reduce", self.all_reduce)
        monkeypatch.setattr(dist, "all_gather", self.all_gather)
        monkeypatch.setattr(dist, "broadcast", self.broadcast)
        monkeypatch.setattr(dist, "barrier", self.barrier)
        for name in ("all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list"):
            monkeypatch.setattr(dist, name, self._refuse(name))
        # DDP needs a real group; one process with identical peers needs no gradient averaging
        monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda module, **kw: module)

    @staticmethod
    def _refuse(name):
        def f(*args, **kwargs):
            raise AssertionError(f"{name}: an object collective picks its device implicitly")
        return f

    def all_reduce(self, t, op=None, group=None, async_op=False):
        self.calls.append(("all_reduce", t.device))
        t.mul_(self.world)

    def all_gather(self, out, t, group=None, async_op=False):
        self.calls.append(("all_gather", t.device))
        for o in out:
            self.calls.append(("all_gather.out", o.device))
            o.copy_(t)

    def broadcast(self, t, src=0, group=None, async_op=False):
        self.calls.append(("broadcast", t.device))

    def barrier(self, group=None, async_op=False, device_ids=None):
        self.calls.append(("barrier", None if device_ids is None else torch.device("cuda", device_ids[0])))


def test_setup_picks_nccl_and_the_gpu_as_collective_device(monkeypatch):
    """Faked CUDA: a GPU model gets NCCL and its own GPU as collective device; CPU gets Gloo and the CPU."""
    from qhnetv2.training import distributed as ddp

    for device, backend, expect in (("cuda", "nccl", torch.device("cuda", 1)),
                                    ("cpu", "gloo", torch.device("cpu"))):
        state = {"backend": None}

        def init(backend=None, **kw):
            state["backend"] = backend

        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", "1")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: state.setdefault("set_device", d))
        monkeypatch.setattr(dist, "is_available", lambda: True)
        monkeypatch.setattr(dist, "is_initialized", lambda: state["backend"] is not None)
        monkeypatch.setattr(dist, "init_process_group", init)
        monkeypatch.setattr(dist, "get_backend", lambda group=None: state["backend"])
        monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
        rank, world, dev = ddp.setup(device)
        assert (rank, world) == (1, 2)
        assert state["backend"] == backend == ddp.backend_for(dev)
        assert dev == expect
        assert ddp.collective_device() == expect  # NCCL: the model's GPU, never the CPU
        monkeypatch.undo()


def test_object_collectives_round_trip_as_tensors_on_the_collective_device(monkeypatch):
    from qhnetv2.training import distributed as ddp

    group = FakeGroup(world=3)
    group.install(monkeypatch)
    obj = {"hamiltonian_mae": [1e-3, 2e-3], "name": "x" * 1000}
    assert ddp.all_gather_objects(obj) == [obj, obj, obj]
    assert ddp.broadcast_object(obj) == obj
    t = torch.arange(4, dtype=torch.float64)
    assert torch.equal(ddp.all_reduce_sum(t.clone()), 3 * t)
    assert group.calls and all(dev == ddp.collective_device() for _, dev in group.calls)


def test_every_collective_of_the_training_loop_is_on_the_collective_device(water, tmp_path, monkeypatch):
    """The whole loop (statistics all-reduce, validation gather, barriers) under a fake two-rank group."""
    from qhnetv2.training import distributed as ddp
    from qhnetv2.training.loop import train

    group = FakeGroup()
    group.install(monkeypatch)
    s = train(_config(), water["data"], water["split"], str(tmp_path / "run"), progress=False)
    assert s["world_size"] == 2 and s["steps"] == 2
    ops = {op for op, _ in group.calls}
    assert {"all_reduce", "all_gather"} <= ops, ops  # the statistics and the validation metrics
    want = ddp.collective_device()
    bad = [(op, dev) for op, dev in group.calls if dev is not None and dev != want]
    assert not bad, f"collectives off {want}: {bad}"


@pytest.mark.skipif(not (torch.cuda.is_available() and dist.is_available() and dist.is_nccl_available()),
                    reason="needs a CUDA device and NCCL")
def test_training_loop_under_a_real_nccl_group(water, tmp_path):
    """One rank, real NCCL: any CPU tensor handed to a collective raises inside NCCL."""
    from qhnetv2.training.loop import train

    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        s = train(_config(device="cuda", dtype="float32"), water["data"], water["split"],
                  str(tmp_path / "run"), progress=False)
    finally:
        dist.destroy_process_group()
    assert s["steps"] == 2 and s["final_val"]["n_molecules"] == 2
    assert os.path.exists(s["best_checkpoint"])
