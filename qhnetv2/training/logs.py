"""Run logs: ``RUN/log.csv``, TensorBoard (``RUN/tb``, if installed) and ``RUN/learning_curve.png``.

CSV columns are :data:`COLUMNS`; a row is written every ``log_every`` steps
(training columns) and at every validation (validation columns filled).
On resume the rows after the resumed step are dropped, so the log reads as
one uninterrupted run.
"""
from __future__ import annotations

import csv
import os
import warnings
from typing import Dict, Optional

from ..atomic import atomic_file

COLUMNS = ("step", "epoch", "lr", "loss", "loss_eigen", "loss_orbital", "train_mae_uEh", "grad_norm", "steps_per_s",
           "wall_s", "val_mae_uEh", "val_diag_mae_uEh", "val_offdiag_mae_uEh", "val_orbital_energy_mae_uEh",
           "val_coef_similarity_percent", "val_virtual_mae_uEh", "val_lumo_error_eV", "val_gap_error_eV",
           "val_gap_error_max_eV", "val_max_orbital_error_eV", "val_energy_error_uEh", "val_energy_abs_error_uEh",
           "val_dipole_error_D")

_TB_WARNED = False


class RunLog:
    """CSV + optional TensorBoard writer (create on rank 0 only)."""

    def __init__(self, run_dir: str, resume_step: Optional[int] = None, tensorboard: bool = True):
        self.run_dir = run_dir
        self.csv_path = os.path.join(run_dir, "log.csv")
        rows = []
        if resume_step is not None and os.path.exists(self.csv_path):
            with open(self.csv_path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= resume_step]
        with open(self.csv_path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)
        self.tb = _tensorboard(os.path.join(run_dir, "tb"), resume_step) if tensorboard else None

    def write(self, row: Dict[str, object]) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown log columns {sorted(unknown)}")
        with open(self.csv_path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow({k: _fmt(row.get(k)) for k in COLUMNS})
        if self.tb is not None:
            step = int(row["step"])
            for k, v in row.items():
                if k not in ("step", "epoch") and v is not None:
                    self.tb.add_scalar(("val/" if k.startswith("val_") else "train/") + k, float(v), step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.8g}"
    return str(v)


def _tensorboard(folder: str, resume_step: Optional[int]):
    global _TB_WARNED
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _TB_WARNED:
            warnings.warn("tensorboard is not installed: no TensorBoard logs (RUN/log.csv has everything); "
                          "pip install tensorboard to get them", stacklevel=3)
            _TB_WARNED = True
        return None
    return SummaryWriter(folder, purge_step=resume_step + 1 if resume_step is not None else None)


def plot_learning_curve(csv_path: str, png_path: str) -> Optional[str]:
    """Training loss / MAE and validation MAE against step, log scale; returns the PNG path."""
    if not os.path.exists(csv_path):
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols: Dict[str, list] = {k: [] for k in COLUMNS}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            for k in COLUMNS:
                cols[k].append(float(r[k]) if r.get(k) not in (None, "") else None)

    def series(key):
        pts = [(s, v) for s, v in zip(cols["step"], cols[key]) if v is not None and v > 0]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label, style in (("train_mae_uEh", "train H MAE (batch)", "-"),
                              ("val_mae_uEh", "valid H MAE (EMA)", "o-"),
                              ("val_diag_mae_uEh", "valid diagonal blocks", "--"),
                              ("val_offdiag_mae_uEh", "valid off-diagonal blocks", ":")):
        x, y = series(key)
        if x:
            ax.plot(x, y, style, label=label, markersize=3)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MAE of H (micro-Hartree)")
    ax.set_title("QHNetV2 learning curve")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(png_path) as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)
    return png_path
