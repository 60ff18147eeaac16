"""Permutation errors of the untrained qh9 preset (float64) on the symmetric molecules of
tests/qhnetv2/test_frames.py; run from tests/qhnetv2: python perm_errors.py"""
import sys

sys.path.insert(0, ".")
import test_frames as tf  # noqa: E402

for frame, norm in (("average", "joint"), ("nearest", "separate")):
    m = tf._untrained("qh9", node_frame=frame, norm=norm)
    for name in sorted(tf.SYMMETRIC):
        z, pos = tf.SYMMETRIC[name]()
        err, scale = tf._permutation_error(m, z, pos, seed=len(z))
        print(f"{frame}/{norm} {name}: max |H(Px) - P H(x) P^T| = {err:.2e} Eh (max |H| {scale:.2f} Eh)", flush=True)
