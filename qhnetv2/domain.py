"""The training domain of a checkpoint, and whether a new molecule lies inside it.

A model trained on water and ethanol has seen no C=O double bond, no fluorine and
no molecule of 30 atoms; its prediction for such inputs is an extrapolation that
nothing in its output flags.  So training records what it saw (computed from the
train split's atomic numbers and positions only, no matrices) in
``checkpoint["extra"]["domain"]``, and prediction compares each new molecule with it:

* ``elements``: atomic numbers present in the train split;
* ``pair_distances``: for each element pair within the model's ``cutoff``
  (Angstrom, the message-passing radius), the ``[min, max]`` distance seen; keys
  are Hill-ordered labels (C first, H second, then alphabetical): ``"C-H"``, ``"C-O"``,
  ``"H-O"``;
* ``environments``: the local bonding environments seen, an element with the
  Hill-ordered multiset of its bonded neighbours' elements, e.g. ``"C(C,H,H,H)"``,
  ``"O(C,H)"``, ``"H(O)"`` (an atom without bonded neighbours: ``"O()"``).  Two atoms
  are bonded when ``d < bond_rule["factor"] * (r_a + r_b)`` with the covalent radii in
  ``bond_rule["radii"]`` (Cordero et al. 2008, :data:`COVALENT_RADII`; recorded in the
  domain so that a later change of the table does not move old checkpoints' domains);
* ``n_atoms`` and ``n_ao``: ``[min, max]`` molecule sizes (atoms, atomic orbitals).

:func:`domain_reasons` lists why a molecule is outside (empty: inside), e.g.
``"element F not in the training set (trained on C, H, O)"``,
``"C-O distance 1.20 A below the trained range [1.38, 2.47]"``,
``"environment C(H,O,O) not seen in training (seen for C: C(C,H,H,H), C(C,H,H,O))"``,
``"32 atoms, above the trained maximum 9"``.  Distances slightly outside the trained
range are accepted: the range is widened on both sides by
``max(margin, rel_margin * bound)`` (defaults 0.05 Angstrom and 3 %), since a finite
training set never hits the true extremes of its geometry distribution.

Out-of-domain molecules are reported with :class:`DomainWarning` (a ``UserWarning``;
the ``qhnetv2`` command line prints each as one ``qhnetv2: warning: ...`` line).  A
checkpoint written before domains were recorded has none: nothing is flagged and
:func:`note_no_domain` says so once per checkpoint.

NumPy only (no PySCF, ASE or torch), so it works wherever prediction does.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

DOMAIN_FORMAT = "qhnetv2-domain"
DOMAIN_VERSION = 1

#: single-bond covalent radii, Angstrom (Cordero et al., Dalton Trans. 2008, 2832; C: sp3)
COVALENT_RADII: Dict[int, float] = {
    1: 0.31, 2: 0.28, 3: 1.28, 4: 0.96, 5: 0.84, 6: 0.76, 7: 0.71, 8: 0.66, 9: 0.57, 10: 0.58,
    11: 1.66, 12: 1.41, 13: 1.21, 14: 1.11, 15: 1.07, 16: 1.05, 17: 1.02, 18: 1.06,
    19: 2.03, 20: 1.76, 35: 1.20, 53: 1.39,
}
#: radius of an element missing from the table (a typical metal / heavy main-group value)
FALLBACK_RADIUS = 1.5
#: bonded when d < BOND_FACTOR * (r_a + r_b): 1.2 accepts stretched bonds of hot MD
#: geometries (O-H up to 1.16 A, C-O up to 1.70 A) yet never joins geminal H...H (~1.75 A)
BOND_FACTOR = 1.2
#: default tolerance on the trained distance ranges (Angstrom and relative)
DISTANCE_MARGIN = 0.05
DISTANCE_REL_MARGIN = 0.03
#: at most this many seen environments are listed in a reason
MAX_LISTED = 8

_SYMBOLS = ("X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn "
            "Ga Ge As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe").split()


class DomainWarning(UserWarning):
    """A molecule lies outside the training domain of the model that predicts it."""


def symbol(z: int) -> str:
    """Element symbol of atomic number ``z`` (``"Z=87"`` beyond xenon)."""
    z = int(z)
    return _SYMBOLS[z] if 0 < z < len(_SYMBOLS) else f"Z={z}"


def _hill_key(z: int) -> Tuple[int, str]:
    # Hill order: C, H, then alphabetical (the order of molecular formulas)
    z = int(z)
    return ({6: 0, 1: 1}.get(z, 2), symbol(z))


def pair_label(za: int, zb: int) -> str:
    """``"C-O"``: the element pair in Hill order (independent of argument order)."""
    a, b = sorted((int(za), int(zb)), key=_hill_key)
    return f"{symbol(a)}-{symbol(b)}"


def formula(atomic_numbers) -> str:
    """Hill formula, e.g. ``C2H6O``."""
    z = [int(a) for a in np.asarray(atomic_numbers).reshape(-1)]
    out = []
    for e in sorted(set(z), key=_hill_key):
        n = z.count(e)
        out.append(symbol(e) + (str(n) if n > 1 else ""))
    return "".join(out)


def _as_molecule(atomic_numbers, positions) -> Tuple[np.ndarray, np.ndarray]:
    z = np.asarray(atomic_numbers).reshape(-1).astype(np.int64)
    pos = np.asarray(positions, dtype=np.float64)
    if pos.shape != (z.size, 3):
        raise ValueError(f"positions must have shape [{z.size}, 3] (one row per atomic number), "
                         f"got {list(pos.shape)}")
    return z, pos


def _distances(pos: np.ndarray) -> np.ndarray:
    diff = pos[:, None, :] - pos[None, :, :]
    return np.sqrt((diff * diff).sum(-1))


def _radius(z: int, radii: Optional[Dict[Any, float]] = None) -> float:
    """Covalent radius of ``z``: from ``radii`` (a domain's, keys ``"6"`` as JSON has them)
    when it has one, else from :data:`COVALENT_RADII`, else :data:`FALLBACK_RADIUS`."""
    if radii:
        r = radii.get(str(int(z)), radii.get(int(z)))
        if r is not None:
            return float(r)
    return COVALENT_RADII.get(int(z), FALLBACK_RADIUS)


def environments(atomic_numbers, positions, factor: float = BOND_FACTOR,
                 radii: Optional[Dict[Any, float]] = None) -> List[str]:
    """Bonding environment of each atom, e.g. ``["C(C,H,H,H)", ..., "H(O)"]`` (see the module doc)."""
    z, pos = _as_molecule(atomic_numbers, positions)
    r = np.array([_radius(a, radii) for a in z])
    d = _distances(pos)
    bonded = d < factor * (r[:, None] + r[None, :])
    np.fill_diagonal(bonded, False)
    out = []
    for i in range(z.size):
        nb = sorted((int(a) for a in z[bonded[i]]), key=_hill_key)
        out.append(f"{symbol(z[i])}({','.join(symbol(a) for a in nb)})")
    return out


def pair_ranges(atomic_numbers, positions, cutoff: float) -> Dict[Tuple[int, int], Tuple[float, float]]:
    """``{(z_a, z_b): (min d, max d)}`` over the atom pairs closer than ``cutoff`` (z_a <= z_b)."""
    z, pos = _as_molecule(atomic_numbers, positions)
    if z.size < 2:
        return {}
    iu = np.triu_indices(z.size, 1)
    d = _distances(pos)[iu]
    keep = d <= cutoff
    a, b, d = z[iu[0]][keep], z[iu[1]][keep], d[keep]
    if d.size == 0:
        return {}
    code = np.minimum(a, b) * 1000 + np.maximum(a, b)
    order = np.argsort(code, kind="stable")
    code, d = code[order], d[order]
    uniq, start = np.unique(code, return_index=True)
    mins, maxs = np.minimum.reduceat(d, start), np.maximum.reduceat(d, start)
    return {(int(c) // 1000, int(c) % 1000): (float(lo), float(hi)) for c, lo, hi in zip(uniq, mins, maxs)}


class DomainBuilder:
    """Accumulates the domain of a set of molecules: ``add`` each, then ``to_dict``.

    Args:
        cutoff: the model's message-passing cutoff (Angstrom): only pairs closer than
            this are recorded (the model sees no other distance directly).
        n_ao_of: optional callable ``Z -> number of AOs`` (``layout.n_ao``) to record AO counts.
    """

    def __init__(self, cutoff: float, n_ao_of=None, factor: float = BOND_FACTOR):
        if not (isinstance(cutoff, (int, float)) and cutoff > 0 and math.isfinite(cutoff)):
            raise ValueError(f"cutoff must be a positive number of Angstrom, got {cutoff!r}")
        self.cutoff, self.n_ao_of, self.factor = float(cutoff), n_ao_of, float(factor)
        self.n_molecules = 0
        self.elements: set = set()
        self.pairs: Dict[Tuple[int, int], List[float]] = {}
        self.envs: set = set()
        self.n_atoms = [math.inf, -math.inf]
        self.n_ao = [math.inf, -math.inf]

    def add(self, atomic_numbers, positions) -> None:
        z, pos = _as_molecule(atomic_numbers, positions)
        if z.size == 0:
            raise ValueError("a training molecule has no atoms")
        self.n_molecules += 1
        self.elements.update(int(a) for a in z)
        for key, (lo, hi) in pair_ranges(z, pos, self.cutoff).items():
            cur = self.pairs.setdefault(key, [lo, hi])
            cur[0], cur[1] = min(cur[0], lo), max(cur[1], hi)
        self.envs.update(environments(z, pos, self.factor))
        self.n_atoms = [min(self.n_atoms[0], z.size), max(self.n_atoms[1], z.size)]
        if self.n_ao_of is not None:
            n = int(sum(self.n_ao_of(int(a)) for a in z))
            self.n_ao = [min(self.n_ao[0], n), max(self.n_ao[1], n)]

    def to_dict(self) -> Dict[str, Any]:
        """The JSON-able domain record (see the module doc)."""
        if not self.n_molecules:
            raise ValueError("no molecules were added: the training domain is empty")
        pairs = {pair_label(a, b): [round(lo, 4), round(hi, 4)]
                 for (a, b), (lo, hi) in sorted(self.pairs.items(), key=lambda kv: pair_label(*kv[0]))}
        return {
            "format": DOMAIN_FORMAT, "version": DOMAIN_VERSION,
            "n_molecules": self.n_molecules,
            "elements": sorted(self.elements),
            "cutoff": self.cutoff,
            "pair_distances": pairs,
            "bond_rule": {"factor": self.factor,
                          "radii": {str(z): _radius(z) for z in sorted(self.elements)}},
            "environments": sorted(self.envs),
            "n_atoms": [int(v) for v in self.n_atoms],
            "n_ao": [int(v) for v in self.n_ao] if self.n_ao_of is not None else None,
        }


def build_domain(molecules: Iterable[Tuple[Any, Any]], cutoff: float, n_ao_of=None) -> Dict[str, Any]:
    """The domain record of ``molecules``, an iterable of ``(atomic_numbers, positions)`` (Angstrom)."""
    builder = DomainBuilder(cutoff, n_ao_of)
    for z, pos in molecules:
        builder.add(z, pos)
    return builder.to_dict()


def training_domain(dataset, cutoff: float, layout=None,
                    atomic_numbers: Optional[Sequence[np.ndarray]] = None) -> Dict[str, Any]:
    """The domain of a dataset split (a ``HamiltonianDataset`` / ``HamiltonianReader``).

    Reads only ``atomic_numbers`` and ``positions`` of each record (never the matrices);
    ``atomic_numbers`` may pass them in when already read (same order as the ids).
    ``layout`` (a ``so2ops.BasisLayout``) adds the AO-count range.
    """
    reader = getattr(dataset, "reader", dataset)
    ids = list(reader.ids)
    if atomic_numbers is not None and len(atomic_numbers) != len(ids):
        raise ValueError(f"atomic_numbers: {len(atomic_numbers)} arrays for {len(ids)} molecules")

    def molecules():
        for k, mol_id in enumerate(ids):
            z = atomic_numbers[k] if atomic_numbers is not None else reader.read_field(mol_id, "atomic_numbers")
            yield z, reader.read_field(mol_id, "positions")

    return build_domain(molecules(), cutoff, layout.n_ao if layout is not None else None)


def check_domain_record(domain: Any) -> Dict[str, Any]:
    """``domain`` if it is a usable domain record, else ``ValueError`` naming what is wrong."""
    if not isinstance(domain, dict) or domain.get("format") != DOMAIN_FORMAT:
        raise ValueError("domain: not a qhnetv2 training-domain record (missing format tag)")
    if int(domain.get("version", 0)) > DOMAIN_VERSION:
        raise ValueError(f"domain: record version {domain.get('version')} is newer than this "
                         f"qhnetv2 understands ({DOMAIN_VERSION})")
    for key in ("elements", "cutoff", "pair_distances", "environments", "n_atoms"):
        if key not in domain:
            raise ValueError(f"domain: the record has no {key!r}")
    return domain


def _widen(lo: float, hi: float, margin: float, rel_margin: float) -> Tuple[float, float]:
    return lo - max(margin, rel_margin * lo), hi + max(margin, rel_margin * hi)


def domain_reasons(domain: Dict[str, Any], atomic_numbers, positions, n_ao: Optional[int] = None,
                   margin: float = DISTANCE_MARGIN, rel_margin: float = DISTANCE_REL_MARGIN) -> List[str]:
    """Why the molecule is outside ``domain`` (a list of sentences; empty: inside).

    Args:
        domain: a record of :class:`DomainBuilder` / ``checkpoint["extra"]["domain"]``.
        atomic_numbers: ``[n_atoms]``; positions: ``[n_atoms, 3]`` Angstrom.
        n_ao: the molecule's AO count in the model's basis (checked when both it and
            the record's ``n_ao`` range are known).
        margin, rel_margin: tolerance on the distance ranges (Angstrom, fraction).
    """
    check_domain_record(domain)
    if margin < 0 or rel_margin < 0:
        raise ValueError(f"margin and rel_margin must be >= 0, got {margin} and {rel_margin}")
    z, pos = _as_molecule(atomic_numbers, positions)
    known = {int(e) for e in domain["elements"]}
    reasons: List[str] = []
    trained = ", ".join(symbol(e) for e in sorted(known, key=_hill_key))
    unknown = sorted({int(a) for a in z} - known, key=_hill_key)
    for e in unknown:
        reasons.append(f"element {symbol(e)} not in the training set (trained on {trained})")

    lo_n, hi_n = domain["n_atoms"]
    if z.size > hi_n:
        reasons.append(f"{z.size} atoms, above the trained maximum {hi_n}")
    elif z.size < lo_n:
        reasons.append(f"{z.size} atoms, below the trained minimum {lo_n}")
    ao_range = domain.get("n_ao")
    if n_ao is not None and ao_range:
        if n_ao > ao_range[1]:
            reasons.append(f"{n_ao} atomic orbitals, above the trained maximum {ao_range[1]}")
        elif n_ao < ao_range[0]:
            reasons.append(f"{n_ao} atomic orbitals, below the trained minimum {ao_range[0]}")

    # distances: pairs involving an unknown element are already covered by its reason
    cutoff = float(domain["cutoff"])
    trained_pairs = domain["pair_distances"]
    for (a, b), (lo, hi) in sorted(pair_ranges(z, pos, cutoff).items(), key=lambda kv: pair_label(*kv[0])):
        if a not in known or b not in known:
            continue
        label = pair_label(a, b)
        if label not in trained_pairs:
            reasons.append(f"{label} pair at {lo:.2f} A: no {label} pair within the {cutoff:g} A "
                           f"cutoff in training")
            continue
        t_lo, t_hi = trained_pairs[label]
        ok_lo, ok_hi = _widen(float(t_lo), float(t_hi), margin, rel_margin)
        if lo < ok_lo:
            reasons.append(f"{label} distance {lo:.2f} A below the trained range [{t_lo:.2f}, {t_hi:.2f}]")
        if hi > ok_hi:
            reasons.append(f"{label} distance {hi:.2f} A above the trained range [{t_lo:.2f}, {t_hi:.2f}]")

    rule = domain.get("bond_rule") or {}
    seen = set(domain["environments"])
    known_symbols = {symbol(e) for e in known}
    reported = set()
    for a, env in zip(z, environments(z, pos, float(rule.get("factor", BOND_FACTOR)), rule.get("radii"))):
        if int(a) not in known or env in seen or env in reported:
            continue
        if any(sym and sym not in known_symbols for sym in env[env.index("(") + 1:-1].split(",")):
            continue  # bonded to an unknown element: covered by that element's reason
        reported.add(env)
        same = sorted(s for s in seen if s.split("(")[0] == symbol(a))
        listed = ", ".join(same[:MAX_LISTED]) + (f", ... ({len(same)} in all)" if len(same) > MAX_LISTED else "")
        reasons.append(f"environment {env} not seen in training (seen for {symbol(a)}: {listed or 'none'})")
    return reasons


def warn_out_of_domain(label: str, reasons: Sequence[str], stacklevel: int = 3) -> None:
    """One :class:`DomainWarning` naming the molecule and all its reasons."""
    if reasons:
        warnings.warn(f"{label} is outside the training domain: {'; '.join(reasons)}",
                      DomainWarning, stacklevel=stacklevel)


_NOTED: set = set()


def note_no_domain(source: Optional[str] = None) -> None:
    """Once per ``source``: a note that the checkpoint records no training domain."""
    key = source or "<model>"
    if key in _NOTED:
        return
    _NOTED.add(key)
    where = f"checkpoint {source}" if source else "this checkpoint"
    warnings.warn(f"{where} records no training domain (not written by qhnetv2 train, or by a version "
                  f"before domains were recorded): molecules are not checked against what the model "
                  f"was trained on",
                  DomainWarning, stacklevel=3)
