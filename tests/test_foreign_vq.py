"""bench/foreign_vq.py (issue 13's foreign-world check) runs end to end at tiny sizes: the world
reads back through the LM-listener reader, both implementations train and report Rec."""
import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("foreign_vq", ROOT / "bench" / "foreign_vq.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_foreign_world_identity_lives_in_beta_and_the_script_runs(tmp_path):
    fv = _module()
    c = fv.foreign_world(0, drift=1.0, n_segments=(10, 2, 2), seconds=12.0)
    betas = {s.listener_id: s.listener_beta for s in c.train}
    assert len(betas) == 5 and len({b.tobytes() for b in betas.values()}) == 5
    # the resting offset is a function of beta: per-person mean motion differs across people
    means = np.stack([np.mean([s.listener_motion.mean(0) for s in c.train if s.listener_id == p], 0) for p in betas])
    assert np.abs(means - means.mean(0)).max() > 0.1
    out = tmp_path / "r.json"
    assert fv.main(["--seeds", "0", "--drift", "1", "--steps", "4", "--ref-steps", "4", "--segments", "6", "2", "2",
                    "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    for k in ("ours_naive", "ours_disentangled", "ref_naive", "ref_disentangled", "rec_mean"):
        assert np.isfinite(row[k]) and row[k] > 0, k
    # --data DIR: the same four models on a dataset directory of one's own
    from minilisten.data.formats import save_lm_listener
    save_lm_listener(fv.foreign_world(1, drift=0.0, n_segments=(6, 2, 2), seconds=12.0), tmp_path / "mine")
    assert fv.main(["--data", str(tmp_path / "mine"), "--seeds", "0", "--steps", "2", "--ref-steps", "2",
                    "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["drift"] is None and np.isfinite(row["ref_disentangled"])
