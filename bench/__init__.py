"""bench: kernel microbenchmarks of so2ops against the baselines users would otherwise run.

Entry point::

    python -m bench [ops|all|ENTRY ...] [--quick] [--device cpu|cuda] [--out DIR]
    python -m bench compare A.json B.json

Layout (one job per module):

* ``registry``   what can be benchmarked: ``Entry`` (an op, a model, a sanity
  row), ``Case`` (one shape x dtype), ``Impl`` (a backend or a baseline) and
  ``Workload`` (the callable plus the tensors it differentiates).
* ``ops/*``      one module per so2ops op: shapes, inputs, the analytic FLOP
  and byte counts, and the implementations it is timed with.
* ``baselines/*`` what users would otherwise write: eSCN-style dense-Wigner
  code, an e3nn tensor-product convolution, optional third-party kernels.
* ``timer``, ``memory``, ``peaks``, ``device``  measurement.
* ``runner``     correctness first, then timing, memory and speedups.
* ``report``, ``schema``, ``plots``, ``compare``  output.
* ``checkpoint`` atomic writes, the per-case partial document and ``--resume``.

Models get benchmarked by registering an ``Entry`` of ``kind="model"``
(see ``registry.Entry``); ``python -m bench all`` then includes them.
"""
SCHEMA_VERSION = "so2ops-bench/1"
