"""Backend registry: reporting, forcing, and the forward-time choice reaching backward."""
import threading

import pytest
import torch

import so2ops
from so2ops import dispatch as registry

from _helpers import message_inputs


def test_backends_report_is_consistent():
    report = so2ops.backends()
    assert set(report) == set(registry.BACKENDS)
    assert report["reference"] == {"built": True, "devices": ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])}
    for name, info in report.items():
        for dev in info["devices"]:
            assert registry.runnable(name, torch.device(dev))
    for op in ("edge_wigner", "rotate", "so2_linear", "so2_message"):
        assert "reference" in registry.implementations(op)


def _spy(monkeypatch, op, backend):
    calls = []
    impl = registry._IMPLS[op][backend]
    original = impl.backward
    monkeypatch.setattr(impl, "backward", lambda *a: calls.append(threading.get_ident()) or original(*a))
    return calls


@pytest.mark.parametrize("where", ["outside the context", "another thread"])
def test_forward_time_backend_is_used_by_backward(monkeypatch, where):
    calls = _spy(monkeypatch, "so2_message", "reference")
    x, v, wig, ei, w, mod = message_inputs(5, 12, 2, 2, 3, 3, torch.float64, "cpu")
    x.requires_grad_(True)
    with so2ops.use_backend("reference"):
        out = so2ops.so2_message(x, wig, ei, w, 2, 2, 3, mod)
    if where == "another thread":
        t = threading.Thread(target=lambda: out.sum().backward())
        t.start()
        t.join()
    else:
        out.sum().backward()
    assert len(calls) == 1 and x.grad is not None
