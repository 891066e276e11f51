"""The main job end to end, CI-sized: `python -m minilisten demo --quick` produces finite tables."""
import json
import math

from minilisten.__main__ import main


def test_demo_quick_produces_finite_tables(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())
    t1 = report["table1"]
    assert list(t1) == ["GT", "Random", "NN facial motion", "NN speech content", "Naive random walk",
                        "LM-listener (words only)", "Ours random walk", "Ours", "ARIG-style (continuous)"]
    for name, row in t1.items():
        keys = ("variation", "diversity") if name == "GT" else ("l2", "fd", "variation", "diversity", "pfd", "l2_affect")
        for k in keys:
            assert math.isfinite(row[k]) and row[k] >= 0, (name, k, row[k])
    assert list(report["table4"]) == ["Naive", "MM only", "ID only", "Full"]
    abl = report["arig_ablation"]                                 # the appendix's ablation table
    assert len(abl) == 3 and all(math.isfinite(r["l2"]) for r in abl.values())
    assert abl["Full (diffusion head, bidirectional-integrated learning)"]["l2"] == t1["ARIG-style (continuous)"]["l2"]
    for row in report["table5"].values():
        assert math.isfinite(row["rec"]) and row["ppl"] > 1
    text = (out / "tables.md").read_text()
    assert "Table 1" in text and "Table 4" in text and "Table 5" in text
    for png in report["plots"]:
        assert (tmp_path / "demo" / png.split("/")[-1]).stat().st_size > 10_000
    # the plotted clip as a video: speaker | Ours | LM-listener | ground truth, one frame per motion frame
    from minilisten.render import read_mp4
    assert {"clip.mp4", "clip.png", "trajectories.png"} <= {p.split("/")[-1] for p in report["plots"]}
    frames, fps = read_mp4(out / "clip.mp4")
    from minilisten.pipeline import DemoConfig, data_spec, demo_data, test_clips
    cfg = DemoConfig.quick()
    lengths = {c.T for c in test_clips(demo_data(data_spec(cfg)).test, cfg.max_test_clips)}
    assert len(frames) in lengths and frames.shape[1:] == (256 + 80, 4 * 256, 3) and fps == 30
    # checkpoints of the two VQ-VAEs and the full LM are loadable
    from minilisten.lm import ListenerLM
    from minilisten.vqvae import VQVAE
    VQVAE.from_pretrained(out / "vq_disentangled")
    ListenerLM.from_pretrained(out / "lm_full")


def test_readme_python_api_runs_on_demo_checkpoints(tmp_path):
    """The README's Python API block, run against the quick demo's checkpoints."""
    import re
    from pathlib import Path
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--no-progress", "--out", str(out), "--stage2-steps", "5",
                 "--stage1-steps", "2", "--vq-steps", "10", "--max-test-clips", "4"]) == 0
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Python API\n+```python\n(.*?)```", readme, re.S).group(1)
    code = code.replace("runs/demo", str(out)).replace("synthetic_corpus(seed=0)",
                                                        "synthetic_corpus(seed=0, n_identities=2, n_segments=20, seconds=16.0)")
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert tuple(ns["motion"].shape) == (1, 240, 56) and ns["codes"].shape == (30,)
    assert ns["out"].ndim == 2 and ns["out"].shape[1] == 56
