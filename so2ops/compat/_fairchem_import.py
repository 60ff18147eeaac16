"""Import fairchem's UMA / eSCN-MD building blocks without fairchem's heavy top level.

``import fairchem.core.models.uma.nn.so2_layers`` runs ``fairchem/core/__init__.py``
first, which imports the ASE calculator, the inference stack and their
dependencies (monty, hydra, omegaconf, huggingface_hub, ...), none of which the
model building blocks need.  so2ops installs ``fairchem-core`` with ``--no-deps``
(it pins another torch), so that top-level import fails.

Strategy (``load_fairchem_uma``), least invasive first:

1. If a real ``fairchem.core`` is already imported, or imports cleanly, use it.
2. Otherwise register *empty parent packages* ``fairchem``, ``fairchem.core``,
   ``fairchem.core.models``, ``fairchem.core.models.uma``, ``fairchem.core.common``
   (module objects whose ``__path__`` points at the installed directories, so
   their ``__init__.py`` files are never executed) and import the submodules
   ``fairchem.core.models.uma.{nn,common}.*`` normally: they only need torch and
   e3nn.  Failed partial imports from step 1 are purged from ``sys.modules``.
3. ``escn_md_block`` (the ``Edgewise`` block) also imports fairchem's graph-parallel
   helpers ``fairchem.core.common.gp_utils`` / ``...parallelism.graph_parallel_a2a``
   (omegaconf, the registry, ...).  If those cannot be imported, two minimal
   stand-ins are registered under those names: ``gp_utils.initialized()`` returns
   ``False`` (single-process: the only branch ``Edgewise.forward`` then takes) and
   the all-to-all helpers raise.  ``ns.escn_md_block_standins`` says whether this
   happened.

The stubs live in ``sys.modules`` under fairchem's own names (the fairchem
modules import each other by absolute name), so after step 2 a later
``import fairchem.core`` in the same process returns the stub package, not the
full one.  Set ``SO2OPS_FAIRCHEM_IMPORT=full`` to forbid stubs (step 1 only).

Usage::

    from so2ops.compat._fairchem_import import load_fairchem_uma
    fc = load_fairchem_uma()          # ImportError with a clear message if impossible
    conv = fc.so2_layers.SO2_Convolution(...)
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from types import SimpleNamespace

__all__ = ["load_fairchem_uma", "fairchem_available", "FAIRCHEM_TESTED_VERSION"]

#: The fairchem-core release the compat layer and its tests were written against.
FAIRCHEM_TESTED_VERSION = "2.24.0"

_SUBMODULES = {
    # namespace attribute -> module name under fairchem.core.models.uma
    "so2_layers": "nn.so2_layers",
    "radial": "nn.radial",
    "activation": "nn.activation",
    "embedding": "nn.embedding",
    "execution_backends": "nn.execution_backends",
    "so3_layers": "nn.so3_layers",
    "layer_norm": "nn.layer_norm",
    "so3": "common.so3",
    "rotation": "common.rotation",
    "wigner_d_hybrid": "common.quaternion.wigner_d_hybrid",
    "quaternion_wigner_utils": "common.quaternion.quaternion_wigner_utils",
}
_UMA = "fairchem.core.models.uma"
_cache: SimpleNamespace | None = None


def _installed_core_dir() -> str:
    spec = importlib.util.find_spec("fairchem")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "fairchem is not installed; install it without its dependencies (it pins another torch): "
            f'pip install --no-deps "fairchem-core=={FAIRCHEM_TESTED_VERSION}" (scripts/install.sh does this)'
        )
    for base in spec.submodule_search_locations:
        core = os.path.join(base, "core")
        if os.path.isfile(os.path.join(core, "models", "uma", "nn", "so2_layers.py")):
            return core
    raise ImportError("fairchem is installed but has no fairchem/core/models/uma/nn/so2_layers.py "
                      f"(tested with fairchem-core {FAIRCHEM_TESTED_VERSION})")


def _purge(prefix: str = "fairchem") -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


def _stub_package(name: str, path: str) -> None:
    mod = sys.modules.get(name)
    if mod is not None:
        return
    mod = types.ModuleType(name)
    mod.__path__ = [path]
    mod.__package__ = name
    mod.__file__ = None
    mod.__so2ops_stub__ = True
    sys.modules[name] = mod
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, mod)


def _install_stubs(core: str) -> None:
    root = os.path.dirname(core)
    _stub_package("fairchem", root)
    _stub_package("fairchem.core", core)
    _stub_package("fairchem.core.models", os.path.join(core, "models"))
    _stub_package("fairchem.core.models.uma", os.path.join(core, "models", "uma"))
    _stub_package("fairchem.core.common", os.path.join(core, "common"))


def _gp_standins() -> None:
    """Single-process stand-ins for fairchem's graph-parallel helpers (see module doc, step 3)."""
    gp = types.ModuleType("fairchem.core.common.gp_utils")
    gp.__so2ops_stub__ = True
    gp.initialized = lambda: False

    def _no_gp(*args, **kwargs):
        raise RuntimeError("graph parallelism is not available in so2ops' fairchem stand-in")

    gp.get_gp_config = _no_gp
    gp.gather_from_model_parallel_region_sum_grad = _no_gp
    sys.modules[gp.__name__] = gp
    setattr(sys.modules["fairchem.core.common"], "gp_utils", gp)

    par = types.ModuleType("fairchem.core.common.parallelism")
    par.__path__ = []
    par.__so2ops_stub__ = True
    a2a = types.ModuleType("fairchem.core.common.parallelism.graph_parallel_a2a")
    a2a.__so2ops_stub__ = True

    class GPContext:  # noqa: D401 - placeholder type used only in annotations
        """Placeholder: graph-parallel context (unused single-process)."""

    a2a.GPContext = GPContext
    a2a.all_to_all_collect = _no_gp
    par.graph_parallel_a2a = a2a
    sys.modules[par.__name__] = par
    sys.modules[a2a.__name__] = a2a
    setattr(sys.modules["fairchem.core.common"], "parallelism", par)


def _load_modules(ns: SimpleNamespace) -> None:
    for attr, sub in _SUBMODULES.items():
        setattr(ns, attr, importlib.import_module(f"{_UMA}.{sub}"))
    jd_path = os.path.join(os.path.dirname(ns.so2_layers.__file__), "..", "Jd.pt")
    ns.jd_path = os.path.normpath(jd_path)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("fairchem-core")
    except Exception:  # pragma: no cover - metadata missing
        return "unknown"


def load_fairchem_uma() -> SimpleNamespace:
    """Return a namespace with fairchem's UMA building blocks, or raise ``ImportError``.

    Attributes: ``so2_layers``, ``radial``, ``activation``, ``embedding``,
    ``execution_backends``, ``so3_layers``, ``layer_norm``, ``so3``, ``rotation``,
    ``wigner_d_hybrid``, ``quaternion_wigner_utils``, ``escn_md_block`` (modules);
    ``jd_path`` (fairchem's ``Jd.pt`` for ``rotation.eulers_to_wigner``);
    ``version`` (installed fairchem-core); ``mode`` (``"full"`` or ``"stub"``);
    ``escn_md_block_standins`` (True if the graph-parallel stand-ins were needed).
    The result is cached.
    """
    global _cache
    if _cache is not None:
        return _cache
    mode_req = os.environ.get("SO2OPS_FAIRCHEM_IMPORT", "auto").lower()
    if mode_req not in ("auto", "full", "stub"):
        raise ValueError(f"SO2OPS_FAIRCHEM_IMPORT must be auto, full or stub, got {mode_req!r}")
    core = _installed_core_dir()
    ns = SimpleNamespace(version=_version(), mode=None, escn_md_block_standins=False)
    errors = []

    existing = sys.modules.get("fairchem.core")
    if existing is not None and not getattr(existing, "__so2ops_stub__", False):
        mode_req = "full"  # a real fairchem is already imported: never shadow it
    if mode_req in ("auto", "full") and (existing is None or not getattr(existing, "__so2ops_stub__", False)):
        before = set(sys.modules)
        try:
            importlib.import_module("fairchem.core")
            _load_modules(ns)
            ns.escn_md_block = importlib.import_module(f"{_UMA}.escn_md_block")
            ns.mode = "full"
        except Exception as exc:  # noqa: BLE001 - any failure of the heavy import: fall back
            errors.append(f"full import: {type(exc).__name__}: {exc}")
            if mode_req == "full":
                raise ImportError(f"cannot import fairchem.core ({errors[-1]}); "
                                  "unset SO2OPS_FAIRCHEM_IMPORT to allow the stub loader") from exc
            for name in set(sys.modules) - before:
                if name == "fairchem" or name.startswith("fairchem."):
                    del sys.modules[name]
    if ns.mode is None:
        try:
            _install_stubs(core)
            _load_modules(ns)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"stub import: {type(exc).__name__}: {exc}")
            _purge()
            raise ImportError("cannot import fairchem's UMA modules: " + "; ".join(errors)) from exc
        try:
            ns.escn_md_block = importlib.import_module(f"{_UMA}.escn_md_block")
        except Exception:  # noqa: BLE001 - gp_utils' deps missing: use the stand-ins
            for name in [n for n in sys.modules if n.startswith("fairchem.core.common.")
                         or n == f"{_UMA}.escn_md_block"]:
                del sys.modules[name]
            _gp_standins()
            try:
                ns.escn_md_block = importlib.import_module(f"{_UMA}.escn_md_block")
            except Exception as exc:  # noqa: BLE001
                raise ImportError(f"cannot import {_UMA}.escn_md_block: {type(exc).__name__}: {exc}") from exc
            ns.escn_md_block_standins = True
        ns.mode = "stub"
    _cache = ns
    return ns


def fairchem_available() -> bool:
    """True if ``load_fairchem_uma()`` succeeds."""
    try:
        load_fairchem_uma()
        return True
    except ImportError:
        return False
