"""``TrainConfig``: every setting of a training run, loaded from YAML.

A config file (or a shipped preset name: ``tiny``, ``md17``, ``qh9``, see
``qhnetv2/configs/*.yaml``) looks like::

    model:                 # preset name + any ModelConfig field as an override
      preset: tiny
      basis: null          # null: the dataset's basis
      elements: null       # null: the elements of the train + valid molecules
      channels: 64         # (example override)
    target: minao          # full | core | minao  (residual over qhnetv2.baseline)
    dtype: float32         # float32 | float64  (model weights and activations)
    target_dtype: float64  # float32 | float64  (targets, errors and loss sums)
    batch_size: 8          # global batch (molecules per step, over all ranks)
    lr: 5.0e-4
    ...

Unknown keys anywhere raise ``ValueError`` naming them (a typo never silently
falls back to a default).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

#: preset names shipped as package data (qhnetv2/configs/<name>.yaml)
PRESET_NAMES = ("tiny", "md17", "qh9")
_MODEL_META_KEYS = ("preset", "basis", "elements")


@dataclass
class TrainConfig:
    """Settings of one training run (see the module docstring for the YAML form).

    ``model``: dict with ``preset`` (a ``qhnetv2.model.PRESETS`` name), ``basis``
    (None: the dataset's), ``elements`` (None: those of the train+valid sets)
    and any ``ModelConfig`` field as an override.
    ``loss``: ``{mae: a, mse: b, eigen: c, eigen_mse: d, orbital: o, n_virtual: k, w_rest: r}``:
    ``a * MAE + b * MSE`` over all Hamiltonian entries of the global batch (QHNet's
    loss) plus ``c * weighted-mean |M| + d * weighted-mean M^2`` of the error in the
    label's orbital basis, ``M = C^T (H_pred - H_true) C`` with the label's generalised
    eigenvectors ``C`` (``qhnetv2.training.eigenbasis_loss``; it controls orbital
    energies and the HOMO-LUMO gap, which the entry-wise loss does not).  Orbital
    weights: 1 for the occupied orbitals and the lowest ``n_virtual`` virtuals,
    ``w_rest`` for the others (0: those are ignored and not cached -- but then an
    error in the high-virtual block, which is what pulls a spurious orbital below
    the LUMO, goes unpenalised; measured, it does).  Omitted weights are 0
    (``{mae: 1}`` is a pure MAE); ``n_virtual`` defaults to 4 and ``w_rest`` to 0.3.
    ``o * mean |e_pred - e_true|`` over the occupied orbitals and the lowest ``n_virtual``
    virtuals (the frontier only: weighting the higher virtuals too made every metric
    worse, measured): the predicted orbital energies themselves, exactly, as the
    eigenvalues of ``diag(e) + M`` (needs all columns of ``C``, which are then cached); it
    sees a spurious orbital below the LUMO directly (``eigenbasis_loss.orbital_energy_sums``).
    With ``c`` or ``d`` > 0, ``C`` is computed once per training molecule (scipy,
    float64) into ``RUN/eigen_cache/`` (``n_ao + 1`` by ``n_ao`` float64 per
    molecule with ``w_rest`` > 0, like the base cache).  The presets leave both
    spectrum terms off (see docs/model.md, "Training loss", for the measurement).
    ``val_orbitals``: validation computes orbital metrics (occupied orbital energies and
    coefficients, LUMO, HOMO-LUMO gap, lowest virtuals, worst orbital; ``qhnetv2.metrics``);
    ``val_density``: also the energy and dipole of the predicted density with the labels'
    functional (PySCF, two Fock builds per validation molecule).
    ``lr_decay``: ``cosine`` or ``linear`` from ``lr`` (after ``warmup_steps``
    of linear warm-up) down to ``lr * lr_floor`` at ``max_steps``.
    ``readout_init_scale``: multiply the model's final readout weights by this at the
    start of a fresh run (None: keep the model's initialisation).  Small values start
    the prediction near the fitted atomic reference instead of at random blocks of
    ~0.3 Hartree, which trains several times faster on residual targets.
    ``ema_decay``: 0 disables the exponential moving average of the weights;
    otherwise validation and ``best.pt`` use the EMA weights.
    ``target_dtype``: dtype of the targets, of the error ``pred - target`` and of the loss
    sums (the model still runs in ``dtype``; its float32 output is cast up before the
    subtraction and the gradient flows back in float32).  Default ``float64``: with
    ``target: full`` (the md17 and qh9 presets) core diagonal entries reach -20 Eh, where
    a float32 ulp is about 2 uEh, and sums over a batch of ~10^6 entries lose more in
    float32 accumulation -- a visible part of the ~10 uEh error level the field now
    reaches.  The cost is one float64 copy of the target and of the error per batch
    (16 bytes per H entry, small next to the model's activations).  ``float32`` gives
    the behaviour of runs from before this option (a resumed old run keeps it).
    ``val_max_molecules`` / ``atom_reference_molecules``: validate on / fit the atomic
    reference to a random subset of this many valid / train molecules, drawn with
    ``seed`` (``qhnetv2.training.data.seeded_subset``: the same on every rank and after
    a resume; not the first N ids, which in catalogue order are the smallest molecules).
    """

    model: Dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})
    target: str = "minao"
    dtype: str = "float32"
    target_dtype: str = "float64"
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    max_steps: int = 10000
    lr_decay: str = "cosine"
    lr_floor: float = 0.01
    grad_clip: Optional[float] = 10.0
    ema_decay: float = 0.99
    val_every: int = 500
    log_every: int = 10
    checkpoint_every: Optional[int] = None  # None: at every validation
    seed: int = 0
    loss: Dict[str, Any] = field(default_factory=lambda: {"mae": 1.0, "mse": 1.0})
    num_workers: int = 0
    bucket: bool = True
    val_orbitals: bool = True
    val_density: bool = False  # + energy and dipole of the predicted density (2 Fock builds per molecule)
    val_max_molecules: Optional[int] = None
    atom_reference_molecules: int = 2000
    readout_init_scale: Optional[float] = None
    device: str = "auto"  # auto | cpu | cuda

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "TrainConfig":
        from qhnetv2.baseline import TARGETS

        if not isinstance(self.model, dict):
            raise ValueError(f"model: expected a mapping, got {type(self.model).__name__}")
        self.model = dict(self.model)
        self.model.setdefault("preset", "tiny")
        _check_model_section(self.model)
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if self.target_dtype not in ("float32", "float64"):
            raise ValueError(f"target_dtype must be float32 or float64, got {self.target_dtype!r}")
        if self.lr_decay not in ("cosine", "linear"):
            raise ValueError(f"lr_decay must be cosine or linear, got {self.lr_decay!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        for name in ("batch_size", "max_steps", "val_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
            setattr(self, name, int(getattr(self, name)))
        for name in ("warmup_steps", "num_workers", "seed", "atom_reference_molecules"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
            setattr(self, name, int(getattr(self, name)))
        if self.checkpoint_every is not None:
            if int(self.checkpoint_every) < 1:
                raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every!r}")
            self.checkpoint_every = int(self.checkpoint_every)
        if self.readout_init_scale is not None:
            if not float(self.readout_init_scale) >= 0:
                raise ValueError(f"readout_init_scale must be >= 0 or null, got {self.readout_init_scale!r}")
            self.readout_init_scale = float(self.readout_init_scale)
        if self.val_max_molecules is not None:
            self.val_max_molecules = int(self.val_max_molecules)
        if not float(self.lr) > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0.0 <= float(self.lr_floor) <= 1.0:
            raise ValueError(f"lr_floor is a fraction of lr in [0, 1], got {self.lr_floor!r}")
        if not 0.0 <= float(self.ema_decay) < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if self.grad_clip is not None and not float(self.grad_clip) > 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {self.grad_clip!r}")
        self.lr, self.lr_floor, self.ema_decay = float(self.lr), float(self.lr_floor), float(self.ema_decay)
        self.weight_decay = float(self.weight_decay)
        self.loss = normalize_loss(self.loss)
        return self

    @property
    def loss_dtype(self) -> str:
        """The dtype of targets, errors and loss sums: ``target_dtype``, or float64 if the model is."""
        return "float64" if "float64" in (self.dtype, self.target_dtype) else "float32"

    @property
    def eigen_loss(self) -> bool:
        """Whether the eigenbasis loss term is on (``loss.eigen`` or ``loss.eigen_mse`` > 0)."""
        return self.loss["eigen"] > 0 or self.loss["eigen_mse"] > 0 or self.loss["orbital"] > 0

    # ------------------------------------------------------------------ model
    def model_overrides(self) -> Dict[str, Any]:
        """The ``ModelConfig`` overrides of the ``model`` section (no preset/basis/elements)."""
        return {k: v for k, v in self.model.items() if k not in _MODEL_META_KEYS}

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], source: str = "config") -> "TrainConfig":
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a mapping at the top level, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; expected some of {sorted(names)}")
        return cls(**d)


#: weights of the loss terms (``loss`` section), 0 when omitted
LOSS_WEIGHTS = ("mae", "mse", "eigen", "eigen_mse", "orbital")


def normalize_loss(loss: Any) -> Dict[str, Any]:
    """The ``loss`` section checked and with every key filled in (see :class:`TrainConfig`)."""
    from .eigenbasis_loss import DEFAULT_N_VIRTUAL, DEFAULT_W_REST

    if not isinstance(loss, dict):
        raise ValueError(f"loss: expected a mapping like {{mae: 1.0, mse: 1.0}}, got {loss!r}")
    keys = LOSS_WEIGHTS + ("n_virtual", "w_rest")
    unknown = sorted(set(loss) - set(keys))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in loss; expected some of {', '.join(keys)}")
    out: Dict[str, Any] = {k: float(loss.get(k, 0.0)) for k in LOSS_WEIGHTS}
    if any(not v >= 0 for v in out.values()) or sum(out.values()) <= 0:
        raise ValueError(f"loss weights must be >= 0 and not all 0, got {out}")
    n_virtual = loss.get("n_virtual", DEFAULT_N_VIRTUAL)
    if isinstance(n_virtual, bool) or int(n_virtual) != n_virtual or int(n_virtual) < 0:
        raise ValueError(f"loss.n_virtual must be an integer >= 0, got {n_virtual!r}")
    out["n_virtual"] = int(n_virtual)
    out["w_rest"] = float(loss.get("w_rest", DEFAULT_W_REST))
    if not out["w_rest"] >= 0:
        raise ValueError(f"loss.w_rest must be >= 0, got {loss.get('w_rest')!r}")
    return out


def _check_model_section(model: Dict[str, Any]) -> None:
    from qhnetv2.model.config import PRESETS, ModelConfig

    if model["preset"] not in PRESETS:
        raise ValueError(f"model.preset: unknown preset {model['preset']!r}; expected one of {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(model) - fields - set(_MODEL_META_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in model; expected preset, basis, elements "
                         f"or ModelConfig fields {sorted(fields - {'basis', 'elements'})}")
    if model.get("elements") is not None:
        model["elements"] = sorted(int(z) for z in model["elements"])


def preset_path(name: str) -> str:
    """Path of a shipped config preset (``qhnetv2/configs/<name>.yaml``)."""
    from importlib import resources

    return str(resources.files("qhnetv2") / "configs" / f"{name}.yaml")


def load_config(path: str, **overrides: Any) -> TrainConfig:
    """A ``TrainConfig`` from a YAML file or a preset name (``tiny``, ``md17``, ``qh9``).

    ``overrides`` replace top-level keys after loading (e.g. ``max_steps=100``).
    Raises ``ValueError`` naming any unknown key, ``FileNotFoundError`` for a
    missing file.
    """
    if not os.path.exists(path) and path in PRESET_NAMES:
        path = preset_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"config {path!r} not found (a YAML file or one of the presets {list(PRESET_NAMES)})")
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is in the data extra
        raise ImportError("reading YAML configs needs PyYAML: pip install pyyaml") from None
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"config {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"config {path}: expected a mapping at the top level")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(data, source=f"config {path}")


def config_from_checkpoint_extra(extra: Dict[str, Any]) -> Optional[TrainConfig]:
    cfg = extra.get("train_config")
    return TrainConfig.from_dict(dict(cfg)) if cfg else None


def known_keys() -> List[str]:
    return sorted(f.name for f in dataclasses.fields(TrainConfig))
