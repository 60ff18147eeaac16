import json, sys
from qhnetv2.evaluate import evaluate
from qhnetv2.metrics import to_micro_hartree
split = json.load(open("/work/runs/demo_split.json"))
for arm in sys.argv[1:]:
    res = evaluate(f"/work/runs/ab_{arm}/checkpoints/best.pt", "/work/runs/demo_data/data", ids=split["test"], scf=0, device="cpu")
    m = res["metrics"]
    keys = ["hamiltonian_mae_uEh","hamiltonian_diagonal_mae_uEh","hamiltonian_off_diagonal_mae_uEh","orbital_energy_mae_uEh",
            "orbital_coefficient_similarity_percent","virtual_orbital_energy_mae_uEh","lumo_error_eV","gap_error_eV","gap_error_max_eV",
            "max_orbital_energy_error_max_eV","energy_abs_error_uEh","dipole_error_D"]
    print(arm, json.dumps({k: round(m[k], 4) for k in keys if k in m}))
    json.dump(res, open(f"/work/runs/eval_{arm}.json","w"), default=str, indent=1)
