"""The main job end to end, CI-sized: `python -m minilisten demo --quick` produces finite tables, also on data
that lacks modalities."""
import dataclasses
import json
import math

import numpy as np
import pytest

from minilisten.__main__ import main


def test_demo_quick_produces_finite_tables(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--no-progress", "--out", str(out), "--samples", "2"]) == 0
    report = json.loads((out / "results.json").read_text())
    t1 = report["table1"]
    assert list(t1) == ["GT", "Random", "NN facial motion", "NN speech content", "Naive random walk",
                        "LM-listener (words only)", "Ours random walk", "Ours", "ARIG-style (continuous)"]
    for name, row in t1.items():
        for k in ("variation", "diversity") if name == "GT" else ("l2", "fd", "variation", "diversity", "pfd",
                                                                  "l2_affect"):
            assert math.isfinite(row[k]) and row[k] >= 0, (name, k, row[k])
    assert list(report["table4"]) == ["Naive", "MM only", "ID only", "Full"]
    abl = report["arig_ablation"]                                 # the appendix's ablation table
    assert len(abl) == 3 and all(math.isfinite(r["l2"]) for r in abl.values())
    for row in report["table5"].values():
        assert math.isfinite(row["rec"]) and row["ppl"] > 1
    text = (out / "tables.md").read_text()
    assert "Table 1" in text and "Table 4" in text and "Table 5" in text
    assert "under-trained" not in text      # --quick trains the ARIG-style model as long as the full run
    react = report["react"]                                       # --samples 2: the REACT table beside them
    assert "REACT metrics" in text and set(react) >= {"Ours greedy", "ARIG-style", "Random", "GT"}
    assert react["GT"]["frcorr"] == pytest.approx(2.0, abs=1e-3) and react["Ours greedy"]["frdiv"] == 0
    for png in report["plots"]:
        assert (tmp_path / "demo" / png.split("/")[-1]).stat().st_size > 10_000
    # the saved ARIG checkpoint, sampled again on the test clips, gives the reported L2 (numpy by hand)
    from minilisten.arig import ARIG, arig_generate
    from minilisten.data.cli import load_data
    from minilisten.data.windows import test_clips
    from minilisten.pipeline import DemoConfig
    cfg = DemoConfig.quick()
    clips = test_clips(load_data(cfg.data)[0].test, cfg.max_test_clips)
    preds = arig_generate(ARIG.from_pretrained(out / "arig"), clips, seed=0)
    l2 = np.mean([np.mean((p.astype(np.float64) - c.listener_motion) ** 2) for p, c in zip(preds, clips)])
    assert t1["ARIG-style (continuous)"]["l2"] == pytest.approx(l2, rel=1e-5)
    # the plotted clip as a video: speaker | Ours | LM-listener | ground truth, one frame per motion frame
    import imageio_ffmpeg
    assert {"clip.mp4", "clip.png", "trajectories.png"} <= {p.split("/")[-1] for p in report["plots"]}
    video = imageio_ffmpeg.read_frames(str(out / "clip.mp4"))
    meta = next(video)
    assert sum(1 for _ in video) in {c.T for c in clips} and meta["size"] == (4 * 256, 256 + 80) and meta["fps"] == 30
    # checkpoints of the two VQ-VAEs and the full LM are loadable
    from minilisten.lm import ListenerLM
    from minilisten.vqvae import VQVAE
    VQVAE.from_pretrained(out / "vq_disentangled")
    ListenerLM.from_pretrained(out / "lm_full")


def _stripped(tmp_path, **strip):
    from minilisten.data.formats import save_corpus
    from minilisten.data.synthetic import named_corpus
    ds = named_corpus("default", seed=0, n_identities=2, n_segments=16, seconds=16.0)
    ds = dataclasses.replace(ds, **{k: [s.replace(**strip) for s in v] for k, v in ds.splits.items()})
    save_corpus(ds, tmp_path / "data", progress=False)
    return ["demo", "--quick", "--no-progress", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "demo"),
            "--vq-steps", "10", "--stage1-steps", "2", "--stage2-steps", "4", "--arig-steps", "4",
            "--max-test-clips", "4", "--no-video", "--no-arig-ablation"]


def test_demo_on_data_without_words_or_beta_writes_the_rows_it_supports(tmp_path):
    """No words, no beta: no words-only LMs, no IN/AdaIN VQ-VAE, no NN speech content; Ours = SA+emo LM, naive VQ."""
    assert main(_stripped(tmp_path, words=(), history_words=(), listener_beta=None)) == 0
    out = tmp_path / "demo"
    report = json.loads((out / "results.json").read_text())
    assert list(report["table1"]) == ["GT", "Random", "NN facial motion", "Naive random walk", "Ours",
                                      "ARIG-style (continuous)"]
    assert list(report["table4"]) == ["MM only"] and list(report["table5"]) == ["(∅, ∅) naive"]
    notes = "\n".join(report["notes"])
    for said in ("no words", "no listener beta", "NN speech content: left out", "Ours = the LM on SA+emo, naive VQ",
                 "ARIG-style: 4 training steps (the full run trains 300): an under-trained model"):
        assert said in notes, (said, notes)
    from minilisten.arig import ARIG
    T = ARIG.from_pretrained(out / "arig").config.temperature   # the saved model's, chosen by train-arig
    assert f"ARIG-style (continuous): sampling temperature {T:g}, chosen on the validation split" in notes, notes
    assert "Table 4" in (out / "tables.md").read_text()


def test_demo_on_data_without_any_speaker_modality_is_refused_in_one_line(tmp_path, capsys):
    """No words, SA tokens or emotion in any segment: nothing to condition an LM on; one line names it."""
    argv = _stripped(tmp_path, words=(), history_words=(), listener_beta=None, sa_tokens=None, emotion=None)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "expected at least one speaker modality" in err, err


def test_demo_on_learning2listen_layout(tmp_path):
    """Learning2Listen's 64-frame rows with mel and no words (C6): mel units give the LM an SA modality."""
    from l2l_fixture import write_l2l
    write_l2l(tmp_path / "l2l")
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--no-progress", "--data", str(tmp_path / "l2l"), "--out", str(out),
                 "--vq-steps", "10", "--stage1-steps", "2", "--stage2-steps", "4", "--arig-steps", "4",
                 "--no-video", "--no-arig-ablation"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert "Ours" in report["table1"] and "ARIG-style (continuous)" in report["table1"]
    assert any("MelUnits" in n for n in report["notes"]) and (out / "mel_units").is_dir()


def test_readme_python_api_runs_on_demo_checkpoints(tmp_path):
    """The README's Python API block, run against the quick demo's checkpoints."""
    import re
    from pathlib import Path
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--no-progress", "--out", str(out), "--stage2-steps", "5",
                 "--stage1-steps", "2", "--vq-steps", "10", "--arig-steps", "2", "--max-test-clips", "4"]) == 0
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Python API\n+```python\n(.*?)```", readme, re.S).group(1)
    code = code.replace("runs/demo", str(out)).replace(
        "synthetic_corpus(seed=0)", "synthetic_corpus(seed=0, n_identities=2, n_segments=20, seconds=16.0)")
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert tuple(ns["motion"].shape) == (1, 240, 56) and ns["codes"].shape == (30,)
    assert ns["out"].ndim == 2 and ns["out"].shape[1] == 56
