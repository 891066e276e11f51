"""Peer formats (LM-listener, Learning2Listen) built in their exact layouts, our own format, detection,
and the one word repair through every reader."""
import json
import logging
import os

import numpy as np
import pytest
import torch
from l2l_fixture import write_l2l

from minilisten.data.formats import (
    WORD_SECONDS,
    Corpus,
    detect_layout,
    load_corpus,
    load_dataset,
    load_learning2listen,
    load_lm_listener,
    save_corpus,
)
from minilisten.data.segment import D_MOTION, N_SHAPE, Segment, Word
from minilisten.data.windows import motion_stats
from minilisten.errors import UserError

FPS = 30


def raises(match_parts, fn, exc=UserError):
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for part in match_parts:
        assert str(part) in msg, f"{part!r} not in {msg!r}"
    return msg


def assert_segments_equal(a: Segment, b: Segment):
    for k in ("speaker_motion", "listener_motion", "listener_beta", "speaker_beta", "sa_tokens", "emotion", "valence",
              "mel"):
        x, y = getattr(a, k), getattr(b, k)
        assert (x is None) == (y is None), k
        if x is not None:
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), k
    for k in ("fps", "listener_id", "name", "words", "history_words", "sa_rate"):
        assert getattr(a, k) == getattr(b, k), k


# =================================================================================== LM-listener
def lm_record(seed, T, start, fname="trevor_videos/x/025YouTube/025YouTube.mp4"):
    """One segment dict exactly as LM-listener's segments_*.pth stores it (p0 = listener)."""
    g = torch.Generator().manual_seed(seed)
    t0 = start / FPS
    beta = torch.randn(N_SHAPE, generator=g)
    return {
        "fname": fname, "split_start_frame": start, "split_end_frame": start + T,
        "p0_exp": torch.randn(T, 50, generator=g), "p0_pose": torch.randn(T, 6, generator=g),
        "p0_shape": beta.repeat(T, 1) + 0.01 * torch.randn(T, N_SHAPE, generator=g),
        "p0_detail": torch.randn(T, 128, generator=g),
        "p1_exp": torch.randn(T, 50, generator=g), "p1_pose": torch.randn(T, 6, generator=g),
        "p1_shape": torch.randn(N_SHAPE, generator=g).repeat(T, 1),
        "p1_detail": torch.randn(T, 128, generator=g), "start": 0.0,  # extra keys some copies carry
        "before_words": [{"text": "well", "end": t0 - 2.0}, {"text": "so", "end": t0 - 0.5}],
        "during_words": [
            {"text": "early", "end": t0 - 0.1},          # ends before the segment: becomes history
            {"text": "hello", "end": t0 + 0.1},          # start estimate clipped at 0
            {"text": "there", "end": t0 + 0.9},
            {"text": "friend", "end": t0 + 1.0},         # start estimate = previous end (0.9)
            {"text": "late", "end": t0 + T / FPS + 0.5},  # ends after the segment: dropped (as the peer)
        ],
    }


def write_lm(d, n=(3, 2, 2), T=(40, 50, 33), mean=True):
    d.mkdir(parents=True, exist_ok=True)
    recs = {}
    for k, (split, count) in enumerate(zip(("train", "val", "test"), n)):
        recs[split] = [lm_record(100 * k + i, T[i % len(T)], 300 + 1000 * i) for i in range(count)]
        torch.save(recs[split], d / f"segments_{split}.pth")
    if mean:
        np.save(d / "mean.npy", np.arange(56, dtype=np.float32))
        np.save(d / "std.npy", np.full(56, 2.0, np.float32))
    return recs


def test_lm_listener_reads_exact_layout(tmp_path, caplog):
    d = tmp_path / "trevor"
    recs = write_lm(d)
    with caplog.at_level(logging.WARNING, logger="minilisten.data"):
        c = load_lm_listener(d)
    assert isinstance(c, Corpus) and c.source == "lm-listener" and c.fps == FPS
    assert [len(c.train), len(c.val), len(c.test)] == [3, 2, 2]
    np.testing.assert_array_equal(c.mean, np.arange(56))
    np.testing.assert_array_equal(c.std, 2.0)
    assert c.info["stats"] == "mean.npy, std.npy"
    assert all(s.sa_tokens is None and s.emotion is None and s.valence is None for s in c.train + c.val + c.test)
    for split in ("train", "val", "test"):
        for r, s in zip(recs[split], getattr(c, split)):
            T = r["p0_exp"].shape[0]
            assert s.T == T and s.fps == FPS and s.listener_id == "trevor"
            assert np.array_equal(s.listener_motion, torch.cat([r["p0_exp"], r["p0_pose"]], 1).numpy())
            assert np.array_equal(s.speaker_motion, torch.cat([r["p1_exp"], r["p1_pose"]], 1).numpy())
            np.testing.assert_allclose(s.listener_beta, r["p0_shape"].double().mean(0).numpy(), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(s.speaker_beta, r["p1_shape"][0].numpy(), rtol=1e-6, atol=1e-6)
            assert s.name == f"{r['fname']}:{r['split_start_frame']}-{r['split_end_frame']}"
            # words relative to the segment's first frame; starts estimated (WORD_SECONDS)
            assert [w.text for w in s.words] == ["hello", "there", "friend"]
            assert s.words[0].start == 0.0 and s.words[0].end == pytest.approx(0.1)
            assert s.words[1].start == pytest.approx(0.9 - WORD_SECONDS) and s.words[1].end == pytest.approx(0.9)
            assert s.words[2].start == pytest.approx(0.9) and s.words[2].end == pytest.approx(1.0)
            assert [w.text for w in s.history_words] == ["well", "so", "early"]
            assert s.history_words[0].end == pytest.approx(-2.0)
            assert s.history_words[0].start == pytest.approx(-2.0 - WORD_SECONDS)
            assert all(w.start <= w.end for w in s.history_words)
    assert c.info["dropped_words"] == 7 and "repaired_words" not in c.info  # one "late" word per segment
    assert 0 < c.info["listener_beta_max_std"] < 0.05


def test_lm_listener_then_own_format_round_trip(tmp_path):
    write_lm(tmp_path / "lm")
    c = load_lm_listener(tmp_path / "lm")
    save_corpus(c, tmp_path / "ours", progress=False)
    back = load_corpus(tmp_path / "ours")
    assert back.source == "lm-listener"
    for split in ("train", "val", "test"):
        for a, b in zip(getattr(c, split), getattr(back, split)):
            assert_segments_equal(a, b)
    np.testing.assert_array_equal(back.mean, c.mean)


def test_lm_listener_stats_fallbacks(tmp_path):
    d = tmp_path / "a"
    write_lm(d, mean=False)
    c = load_lm_listener(d)
    m, s = motion_stats(c.train)
    np.testing.assert_array_equal(c.mean, m)
    np.testing.assert_array_equal(c.std, s)
    assert c.info["stats"].startswith("computed")
    np.save(d / "p0_mean.npy", np.ones(56, np.float32))
    np.save(d / "p0_std.npy", np.full(56, 3.0, np.float32))
    c = load_lm_listener(d)
    assert c.info["stats"] == "p0_mean.npy, p0_std.npy" and c.std[0] == 3.0
    np.save(d / "mean.npy", np.zeros(56, np.float32))  # mean.npy without std.npy
    raises(["std.npy", "missing", "mean.npy"], lambda: load_lm_listener(d))
    np.save(d / "std.npy", np.zeros(55, np.float32))
    raises(["std.npy", "(56,)", "(55,)"], lambda: load_lm_listener(d))
    np.save(d / "std.npy", np.zeros(56, np.float32))
    raises(["std.npy", "std > 0", "index 0"], lambda: load_lm_listener(d))


def test_lm_listener_numpy_values_and_given_start(tmp_path):
    """numpy arrays/scalars load under weights_only (allowlisted); a word's own 'start' is used."""
    d = tmp_path / "np"
    d.mkdir()
    r = lm_record(0, 30, 60)
    r["p0_exp"] = r["p0_exp"].numpy()
    r["during_words"] = [{"text": "hi", "start": np.float64(2.1), "end": np.float64(2.4)}]
    r["before_words"] = []
    for s in ("train", "val", "test"):
        torch.save([r], d / f"segments_{s}.pth")
    c = load_lm_listener(d, listener_id=lambda rec: rec["fname"].split("/")[0])
    w = c.train[0].words[0]
    assert w.text == "hi" and w.start == pytest.approx(0.1) and w.end == pytest.approx(0.4)
    assert c.train[0].listener_id == "trevor_videos"
    assert np.array_equal(c.train[0].listener_motion[:, :50], r["p0_exp"])


class Opaque:  # a pickled non-tensor object: weights_only refuses it
    def __init__(self):
        self.x = 1


def test_lm_listener_refuses_arbitrary_pickles(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    r = lm_record(0, 30, 60)
    r["extra"] = Opaque()
    for s in ("train", "val", "test"):
        torch.save([r], d / f"segments_{s}.pth")
    raises(["segments_train.pth", "weights_only=True", "allow_pickle=True", "Opaque"], lambda: load_lm_listener(d),
           ValueError)
    c = load_lm_listener(d, allow_pickle=True)  # explicit opt-in works; unknown key ignored
    assert len(c.train) == 1


@pytest.mark.parametrize("mutate,parts", [
    (lambda r: r.update(p0_exp=torch.zeros(40, 49)), ["segments_train.pth[0]", "'p0_exp'", "(T, 50)", "(40, 49)"]),
    (lambda r: r.update(p0_pose=torch.zeros(39, 6)), ["'p0_pose'", "(40, 6)", "(39, 6)"]),
    (lambda r: r.update(p1_exp=torch.zeros(40, 50, 1)), ["'p1_exp'", "(40, 50)", "(40, 50, 1)"]),
    (lambda r: r.update(p0_shape=torch.zeros(40, 99)), ["'p0_shape'", "(40, 100)", "(40, 99)"]),
    (lambda r: r["p1_exp"].__setitem__((5, 3), float("nan")), ["'p1_exp'", "finite", "(5, 3)"]),
    (lambda r: r["p0_pose"].__setitem__((2, 1), float("inf")), ["'p0_pose'", "finite", "(2, 1)"]),
    (lambda r: r.pop("p1_pose"), ["missing field 'p1_pose'"]),
    (lambda r: r.update(p0_exp="oops"), ["'p0_exp'", "tensor or array", "str"]),
    (lambda r: r.update(split_end_frame=r["split_start_frame"] + 41),
     ["'split_end_frame'", "300 + 40 = 340", "got 341"]),
    (lambda r: r["during_words"].append({"text": "x"}), ["'during_words'[5]", "'text' and 'end'", "['text']"]),
    (lambda r: r["during_words"].append({"text": "x", "end": float("nan")}),
     ["'during_words'[5] ('x'): end", "finite"]),
    (lambda r: r["during_words"].append({"text": "x", "end": 10 ** 400}), ["'during_words'[5] ('x'): end", "finite"]),
    (lambda r: r["during_words"].append({"text": "x", "start": -10 ** 400, "end": 10.1}),
     ["'during_words'[5] ('x'): start", "finite"]),
    (lambda r: r["during_words"].append({"text": "x", "end": "10.2"}),
     ["'during_words'[5] ('x'): end", "number", "str"]),
    (lambda r: r["before_words"].append({"text": "b", "end": 10.5}),
     ["'before_words'[2] ('b')", "end <= the segment start", "10.500"]),
    (lambda r: r.update(during_words="hello"), ["'during_words'", "list of dicts", "str"]),
])
def test_lm_listener_bad_records(tmp_path, mutate, parts):
    d = tmp_path / "bad"
    write_lm(d, n=(1, 1, 1), T=(40,))
    recs = torch.load(d / "segments_train.pth", weights_only=True)
    mutate(recs[0])
    torch.save(recs, d / "segments_train.pth")
    raises(parts, lambda: load_lm_listener(d))


def test_lm_listener_missing_and_wrong_layout(tmp_path):
    raises(["nothere", "not found"], lambda: load_lm_listener(tmp_path / "nothere"))
    d = tmp_path / "partial"
    write_lm(d)
    (d / "segments_val.pth").unlink()
    raises(["segments_val.pth", "missing"], lambda: load_lm_listener(d))
    assert len(load_lm_listener(d, splits=("train", "test")).val) == 0
    torch.save({"not": "a list"}, d / "segments_val.pth")
    raises(["segments_val.pth", "expected a list of dicts", "dict"], lambda: load_lm_listener(d))
    torch.save([torch.zeros(3)], d / "segments_val.pth")
    raises(["segments_val.pth[0]", "expected a dict", "Tensor"], lambda: load_lm_listener(d))
    (d / "segments_val.pth").write_bytes(b"not a torch file")
    raises(["segments_val.pth"], lambda: load_lm_listener(d), ValueError)
    raises(["splits", "'dev'"], lambda: load_lm_listener(d, splits=("dev",)))


# ============================================================================== Learning2Listen
#: the segments LAYOUT (tests/l2l_fixture.py) must give, by hand: (name, rows of the file in order)
L2L_EXPECTED = {
    ("fallon", "train"): [("vidD:10-138", [0, 1]), ("vidD:200-264", [2])],
    ("fallon", "test"): [("vidE:0-64", [0])],
    ("trevor", "train"): [("vidA:0-192", [0, 1, 2]), ("vidA:300-364", [4]), ("vidB:0-128", [3, 5])],
    ("trevor", "test"): [("vidC:0-128", [0, 1])],
}


def test_l2l_joins_contiguous_rows_of_one_video(tmp_path, caplog):
    """64-frame rows of one video join into one segment where their frames are contiguous (rows stored apart
    too); p1 is the listener for fallon; the speaker's mel (4 rows per frame) comes along."""
    arr = write_l2l(tmp_path, smooth=False)
    with caplog.at_level(logging.INFO, logger="minilisten.data"):
        c = load_learning2listen(tmp_path, progress=False)
    assert c.source == "learning2listen" and c.fps == FPS and c.val == [] and c.info["rows"] == 12
    assert "joined 12 Learning2Listen rows into 7 segments" in caplog.text
    for split in ("train", "test"):
        want = [(sp, name, rows) for sp in ("fallon", "trevor") for name, rows in L2L_EXPECTED[sp, split]]
        got = getattr(c, split)
        assert [s.name for s in got] == [f"{sp}/{split}/{name}" for sp, name, _ in want]
        for s, (sp, _, rows) in zip(got, want):
            o = 1 if sp == "fallon" else 0
            lis = np.concatenate([arr[sp, split, o, "list_faces"][i, :, :56] for i in rows])
            spk = np.concatenate([arr[sp, split, 1 - o, "speak_faces"][i, :, :56] for i in rows])
            mel = np.concatenate([arr[sp, split, 1 - o, "speak_audio"][i] for i in rows])
            assert s.T == 64 * len(rows) and s.listener_id == sp and s.listener_beta is None and s.words == ()
            assert np.array_equal(s.listener_motion, lis) and np.array_equal(s.speaker_motion, spk)
            assert s.mel.shape == (4 * s.T, 128) and np.array_equal(s.mel, mel)
    for f in ("listener_beta", "speaker_beta", "sa_tokens", "emotion", "valence"):
        assert all(getattr(s, f) is None for s in c.train + c.test), f
    assert all(s.words == () and s.history_words == () for s in c.train + c.test)
    np.testing.assert_array_equal(c.mean, motion_stats(c.train)[0])
    w = c.train[2].window(100, 64)      # trevor vidA:0-192: a window across two rows, mel with it
    assert np.array_equal(w.mel, c.train[2].mel[400:656])
    for p in (tmp_path / "data", tmp_path / "data" / "trevor"):   # the same data from data/ and from data/<speaker>
        c2 = load_learning2listen(p)
        mine = [s for s in c.train + c.test if s.listener_id == "trevor" or p.name == "data"]
        for a, b in zip(mine, c2.train + c2.test, strict=True):
            assert_segments_equal(a, b)


def test_l2l_without_files_or_audio_and_numeric_files(tmp_path):
    arr = write_l2l(tmp_path, {"trevor": {"train": [("v", 0), ("v", 64)], "test": [("v", 200)]}})
    sd = tmp_path / "data" / "trevor" / "train"
    files = arr["trevor", "train", 1, "speak_files"]
    numeric = np.stack([np.full((2, 64), 7), np.zeros((2, 64), int), files[:, :, 2].astype(int)], -1)
    np.save(sd / "p1_speak_files_clean_deca.npy", numeric)       # numbers instead of strings: the same join
    assert [s.name for s in load_learning2listen(tmp_path).train] == ["trevor/train/7:0-128"]
    np.save(sd / "p1_speak_files_clean_deca.npy", numeric.astype(object))   # plain values: the restricted unpickler
    assert [s.T for s in load_learning2listen(tmp_path).train] == [128]
    (sd / "p1_speak_files_clean_deca.npy").unlink()               # no files: one segment per row
    (sd / "p1_speak_audio_clean_deca.npy").unlink()               # no audio: no mel
    c = load_learning2listen(tmp_path)
    assert [s.name for s in c.train] == ["trevor/train/0", "trevor/train/1"] and c.train[0].mel is None
    assert c.test[0].mel is not None


def test_l2l_several_speakers_and_round_trip(tmp_path):
    write_l2l(tmp_path)
    c = load_learning2listen(tmp_path)
    assert c.info["speakers"] == ["fallon", "trevor"] and len(c.train) == 5
    assert {s.listener_id for s in c.train} == {"fallon", "trevor"}
    assert len(load_learning2listen(tmp_path, speakers=["trevor"]).train) == 3
    raises(["['conan']", "found"], lambda: load_learning2listen(tmp_path, speakers=["conan"]))
    save_corpus(c, tmp_path / "ours", progress=False)
    back = load_corpus(tmp_path / "ours")
    for a, b in zip(c.train + c.test, back.train + back.test, strict=True):
        assert_segments_equal(a, b)


def test_l2l_bad_files(tmp_path):
    write_l2l(tmp_path, {"trevor": {"train": [("v", 0), ("v", 64), ("w", 0)], "test": [("v", 0)]}})
    sd = tmp_path / "data" / "trevor" / "train"
    good = np.load(sd / "p1_speak_faces_clean_deca.npy")

    def load():
        return load_learning2listen(tmp_path)

    np.save(sd / "p1_speak_faces_clean_deca.npy", good[:, :, :180])
    raises(["p1_speak_faces_clean_deca.npy", "(N, 64, 184)", "(3, 64, 180)"], load)
    np.save(sd / "p1_speak_faces_clean_deca.npy", good[:2])
    raises(["p1_speak_faces_clean_deca.npy", "(3, 64, 184)", "(2, 64, 184)"], load)
    bad = good.copy()
    bad[1, 10, 52] = np.nan  # a pose column
    np.save(sd / "p1_speak_faces_clean_deca.npy", bad)
    raises(["p1_speak_faces_clean_deca.npy", "finite", "(1, 10, 52)"], load)
    bad[1, 10, 52] = 0
    bad[1, 10, 100] = np.nan  # a detail column: not used, not an error
    np.save(sd / "p1_speak_faces_clean_deca.npy", bad)
    assert len(load().train) == 2
    np.save(sd / "p1_speak_faces_clean_deca.npy", good.astype(np.int64))
    raises(["p1_speak_faces_clean_deca.npy", "float", "int64"], load)
    np.save(sd / "p1_speak_faces_clean_deca.npy", good)

    files = np.load(sd / "p1_speak_files_clean_deca.npy")
    np.save(sd / "p1_speak_files_clean_deca.npy", files[:, :10])
    raises(["p1_speak_files_clean_deca.npy", "(3, 64, 3)", "(3, 10, 3)"], load)
    odd = files.copy()
    odd[0, 0, 2] = "frame-zero"
    np.save(sd / "p1_speak_files_clean_deca.npy", odd)
    raises(["p1_speak_files_clean_deca.npy", "'frame'", "integer frame numbers", "frame-zero"], load)
    np.save(sd / "p1_speak_files_clean_deca.npy", files)

    audio = np.load(sd / "p1_speak_audio_clean_deca.npy")
    np.save(sd / "p1_speak_audio_clean_deca.npy", audio[:, :200])
    raises(["p1_speak_audio_clean_deca.npy", "(3, 256, n)", "(3, 200, 128)"], load)
    audio[2, 5, 3] = np.inf
    np.save(sd / "p1_speak_audio_clean_deca.npy", audio)
    raises(["p1_speak_audio_clean_deca.npy", "finite", "(2, 5, 3)"], load)
    np.save(sd / "p1_speak_audio_clean_deca.npy", np.zeros((3, 256, 80), np.float32))   # any number of mel bands
    assert load().train[0].mel.shape == (512, 80)

    (sd / "p1_speak_faces_clean_deca.npy").unlink()
    raises(["p1_speak_faces_clean_deca.npy", "missing", "'trevor'", "'train'"], load)
    raises(["no Learning2Listen data"], lambda: load_learning2listen(tmp_path / "data" / "trevor" / "train"))
    raises(["not found"], lambda: load_learning2listen(tmp_path / "nope"))


# =================================================================================== our format
def rich_corpus():
    rng = np.random.default_rng(3)

    def seg(T, i, full=True):
        e = rng.random((T, 8)).astype(np.float32)
        return Segment(
            speaker_motion=rng.standard_normal((T, D_MOTION)).astype(np.float32),
            listener_motion=rng.standard_normal((T, D_MOTION)).astype(np.float32),
            fps=25.0 if i == 2 else 30.0, listener_id=f"id{i % 3}", name=f"seg{i} ünïcode",
            listener_beta=rng.standard_normal(N_SHAPE) if full else None,
            speaker_beta=rng.standard_normal(N_SHAPE) if i % 2 else None,
            words=[Word("hello,", 0.1, 0.3), Word('"quoted"', 1 / 3, 0.7)] if full else [],
            history_words=[Word("ah", -2.2, -1.9)] if full else [],
            sa_tokens=rng.integers(0, 1024, int(T / 30 * 50) + i) if full else None, sa_rate=50.0,
            emotion=(e / e.sum(1, keepdims=True)) if full else None,
            valence=rng.uniform(-1, 1, T) if i % 2 == 0 else None,
            mel=rng.standard_normal((4 * T, 5)) if i != 1 else None,
        )
    return Corpus(train=[seg(40, 0), seg(31, 1), seg(45, 2, full=False)], val=[seg(30, 3)], test=[],
                  mean=np.arange(56, dtype=np.float32), std=np.ones(56, np.float32), n_sa=1024,
                  info={"seed": 7, "note": "tiny"})


def test_own_format_round_trips_exactly(tmp_path):
    c = rich_corpus()
    save_corpus(c, tmp_path / "c", progress=False)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["arrays.safetensors", "meta.json"]
    back = load_corpus(tmp_path / "c")
    for split in ("train", "val", "test"):
        assert len(getattr(back, split)) == len(getattr(c, split))
        for a, b in zip(getattr(c, split), getattr(back, split)):
            assert_segments_equal(a, b)
    np.testing.assert_array_equal(back.mean, c.mean)
    np.testing.assert_array_equal(back.std, c.std)
    assert back.n_sa == 1024 and back.info == {"seed": 7, "note": "tiny"} and back.fps is None  # mixed fps
    segs = back.train + back.val + back.test
    for f in ("listener_beta", "speaker_beta", "sa_tokens", "emotion", "valence", "words", "history_words"):
        assert any(getattr(s, f) is not None and len(getattr(s, f)) for s in segs), f   # every optional field kept
    # saving what was loaded gives the same bytes
    save_corpus(back, tmp_path / "c2", progress=False)
    assert (tmp_path / "c" / "meta.json").read_bytes() == (tmp_path / "c2" / "meta.json").read_bytes()
    assert (tmp_path / "c" / "arrays.safetensors").read_bytes() == (tmp_path / "c2" / "arrays.safetensors").read_bytes()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o007, 0o660), (0o077, 0o600)])
def test_saved_corpus_files_follow_the_umask(tmp_path, umask, mode):
    """Both files get 0666 & ~umask, as open() gives (was: arrays.safetensors 0600 beside a 0644 meta.json)."""
    old = os.umask(umask)
    try:
        save_corpus(rich_corpus(), tmp_path / "c", progress=False)
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "c").iterdir()} == \
        {"meta.json": mode, "arrays.safetensors": mode}


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def test_readers_return_read_only_segments_without_copies(tmp_path):
    """Every reader's Segments are read-only and share the reader's memory: views of the loaded file (ours),
    of one array per speaker, split and field (Learning2Listen); no copy per segment."""
    save_corpus(rich_corpus(), tmp_path / "c", progress=False)
    write_l2l(tmp_path / "l2l")
    write_lm(tmp_path / "lm")
    ours, l2l = load_corpus(tmp_path / "c"), load_learning2listen(tmp_path / "l2l")
    lm = load_lm_listener(tmp_path / "lm")
    for corpus in (ours, l2l, lm):
        for s in corpus.train + corpus.test:
            for k in ("speaker_motion", "listener_motion", "listener_beta", "speaker_beta", "sa_tokens", "emotion",
                      "valence", "mel"):
                a = getattr(s, k)
                if a is not None:
                    assert not a.flags.writeable, (corpus.source, k)
                    with pytest.raises(ValueError, match="read-only"):
                        a[0] = 0
    for s in ours.train + ours.test:     # shared with the loaded file (a read-only buffer), not copied
        assert all(isinstance(_root(getattr(s, k)).base, memoryview) for k in ("listener_motion", "mel")
                   if getattr(s, k) is not None)
    for corpus in (l2l,):
        for k in ("speaker_motion", "listener_motion", "mel"):
            for who in {s.listener_id for s in corpus.train}:
                segs = [s for s in corpus.train if who == s.listener_id]
                assert len(segs) > 1 and len({id(_root(getattr(s, k))) for s in segs}) == 1, (corpus.source, k)


def test_own_format_accepts_other_corpus_objects(tmp_path):
    c = rich_corpus()

    class Splits:  # any object with splits; n_sa and info when it has them
        def __init__(self):
            self.train, self.val, self.test = c.train, c.val, c.test
            self.n_sa, self.info = 2048, {"seed": 3}

    save_corpus(Splits(), tmp_path / "s", progress=False)
    back = load_corpus(tmp_path / "s")
    assert back.n_sa == 2048 and back.info == {"seed": 3, "stats": "computed from train listener motion"}
    np.testing.assert_array_equal(back.mean, motion_stats(c.train)[0])  # computed from train on load
    save_corpus(c.train, tmp_path / "l", progress=False)  # a plain list goes to train
    assert len(load_corpus(tmp_path / "l").train) == 3
    save_corpus({"train": c.train[:1], "test": c.val}, tmp_path / "d", progress=False)
    assert [len(x) for x in load_corpus(tmp_path / "d").splits.values()] == [1, 0, 1]
    raises(["corpus.train[1]", "Segment", "int"], lambda: save_corpus([c.train[0], 3], tmp_path / "x"))
    raises(["extra", "dev"], lambda: save_corpus({"dev": []}, tmp_path / "x"))
    raises(["corpus.mean", "(56,)"], lambda: save_corpus(Corpus(train=c.train, mean=np.zeros(3), std=np.ones(3)),
                                                         tmp_path / "x"))


def assert_info_equal(a, b, path="info"):
    """Nested info after a round trip: arrays bit-exact (dtype too), tuples come back as lists."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for k in a:
            assert_info_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_info_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b and (type(b) is type(a) or isinstance(a, np.generic)), path


def test_own_format_info_with_arrays(tmp_path):
    info = {"world": {"M": np.arange(12, dtype=np.float64).reshape(3, 4), "flag": np.array([True, False]),
                      "scalar0d": np.ones((), np.float32), "f16": np.zeros((2, 0), np.float16)},
            "events": [("nod", np.float64(1.5), 3), {"x": None, "y": "z"}], "seed": np.int64(4)}
    c = rich_corpus()
    c.info = info
    save_corpus(c, tmp_path / "i", progress=False)
    back = load_corpus(tmp_path / "i")
    assert_info_equal(info, back.info)
    assert type(back.info["seed"]) is int and back.info["events"][0] == ["nod", 1.5, 3]
    for bad, parts in (({"a": {1: 2}}, ["corpus.info.a", "str keys", "1"]),
                       ({"a": [np.array([object()])]}, ["corpus.info.a[0]", "numeric numpy arrays", "dtype=object"]),
                       ({"a": object()}, ["corpus.info.a", "object"]),
                       ({"a": float("nan")}, ["corpus.info.a", "finite"])):
        c.info = bad
        raises(parts, lambda: save_corpus(c, tmp_path / "bad", progress=False))


def test_synthetic_corpus_round_trip(tmp_path):
    from minilisten.data.synthetic import synthetic_corpus
    c = synthetic_corpus(seed=0, n_identities=2, n_segments=20, seconds=4, fps=30)   # 1 val + 1 test per identity
    assert c.val and c.test
    save_corpus(c, tmp_path / "syn", progress=False)
    back = load_corpus(tmp_path / "syn")
    for split in ("train", "val", "test"):
        for a, b in zip(getattr(c, split), getattr(back, split)):
            assert_segments_equal(a, b)
    if getattr(c, "n_sa", None) is not None:
        assert back.n_sa == c.n_sa
    if getattr(c, "info", None):
        assert_info_equal(c.info, {k: v for k, v in back.info.items() if k in c.info})


def _edit_meta(d, fn):
    meta = json.loads((d / "meta.json").read_text())
    fn(meta)
    (d / "meta.json").write_text(json.dumps(meta))


def test_own_format_bad_files(tmp_path):
    from safetensors.numpy import load_file, save_file

    d = tmp_path / "c"
    save_corpus(rich_corpus(), d, progress=False)
    meta0 = (d / "meta.json").read_text()
    arrays0 = load_file(str(d / "arrays.safetensors"))

    def restore():
        (d / "meta.json").write_text(meta0)
        save_file(arrays0, str(d / "arrays.safetensors"))

    _edit_meta(d, lambda m: m.update(format="something-else"))
    raises(["meta.json", "'format'", "'minilisten-corpus'", "'something-else'"], lambda: load_corpus(d))
    restore()
    _edit_meta(d, lambda m: m.update(version=99))
    raises(["meta.json", "'version'", "99"], lambda: load_corpus(d))
    restore()
    _edit_meta(d, lambda m: m["splits"]["train"][0]["words"][1].__setitem__(1, float("nan")))   # JSON NaN
    raises(["splits.train[0]", "'words'[1] ('\"quoted\"'): start", "finite", "nan"], lambda: load_corpus(d))
    restore()
    _edit_meta(d, lambda m: m["splits"]["train"][0]["history_words"][0].__setitem__(2, -10 ** 400))   # a huge int
    raises(["splits.train[0]", "'history_words'[0] ('ah'): end", "finite"], lambda: load_corpus(d))
    restore()
    _edit_meta(d, lambda m: m["splits"]["train"][0].update(fps="30"))
    raises(["splits.train[0]", "field 'fps'", "expected number", "str"], lambda: load_corpus(d))
    restore()
    _edit_meta(d, lambda m: m["splits"].update(train={"not": "a list"}))
    raises(["meta.json", "'splits.train'", "list of segment records"], lambda: load_corpus(d))
    restore()
    _edit_meta(d, lambda m: m["splits"]["train"][0]["words"].append(["late", 0.1, 99.0]))
    raises(["splits.train[0]", "words[2] ('late')", "end <= 1.333 s", "99.000"], lambda: load_corpus(d))
    restore()
    _edit_meta(d, lambda m: m["splits"]["train"][0]["words"].append(["bad"]))
    raises(["splits.train[0]", "'words'[2]", "[text, start, end]"], lambda: load_corpus(d))
    restore()
    _edit_meta(d, lambda m: m["splits"]["val"][0].pop("fps"))
    raises(["splits.val[0]", "missing field 'fps'"], lambda: load_corpus(d))
    restore()
    (d / "meta.json").write_text("{not json")
    raises(["meta.json", "not valid JSON"], lambda: load_corpus(d))
    restore()

    def arrays(**change):
        a = dict(arrays0)
        for k, v in change.items():
            k = k.replace("__", "/")
            if v is None:
                del a[k]
            else:
                a[k] = v(a[k].copy())
        save_file(a, str(d / "arrays.safetensors"))

    arrays(val__0__listener_motion=lambda x: x[:-1])
    raises(["splits.val[0]", "listener_motion", "expected 30 frames", "got 29"], lambda: load_corpus(d))
    arrays(train__0__valence=lambda x: np.where(np.arange(len(x)) == 3, np.nan, x).astype(np.float32))
    raises(["splits.train[0]", "valence", "finite", "(3,)"], lambda: load_corpus(d))
    arrays(train__1__emotion=np.zeros_like)  # rows no longer sum to 1
    raises(["splits.train[1]", "emotion", "summing to 1"], lambda: load_corpus(d))
    arrays(val__0__speaker_motion=None)
    raises(["missing array 'val/0/speaker_motion'"], lambda: load_corpus(d))
    arrays(val__0__mel=lambda x: x[:-1])
    raises(["splits.val[0]", "mel", "(120, n)", "(119, 5)"], lambda: load_corpus(d))
    arrays(train__0__sa_tokens=lambda x: x.astype(np.int32))
    raises(["'train/0/sa_tokens'", "int64", "int32"], lambda: load_corpus(d))
    arrays(train__0__sa_tokens=lambda x: x + 1024)
    raises(["'train/0/sa_tokens'", "[0, 1024)", "n_sa"], lambda: load_corpus(d))
    (d / "arrays.safetensors").write_bytes(b"garbage")
    raises(["arrays.safetensors", "not a readable safetensors"], lambda: load_corpus(d))
    (d / "arrays.safetensors").unlink()
    raises(["arrays.safetensors", "missing"], lambda: load_corpus(d))
    (d / "meta.json").unlink()
    raises(["meta.json", "missing"], lambda: load_corpus(d))
    raises(["not found"], lambda: load_corpus(tmp_path / "nope"))


# ==================================================================================== detection
def test_load_dataset_detects_all_layouts(tmp_path):
    save_corpus(rich_corpus(), tmp_path / "ours", progress=False)
    write_lm(tmp_path / "lm", n=(1, 1, 1))
    write_l2l(tmp_path / "l2l", {"trevor": {"train": [("v", 0)], "test": [("v", 0)]}})
    assert detect_layout(tmp_path / "ours") == "minilisten"
    assert detect_layout(tmp_path / "lm") == "lm-listener"
    for p in (tmp_path / "l2l", tmp_path / "l2l" / "data", tmp_path / "l2l" / "data" / "trevor"):
        assert detect_layout(p) == "learning2listen"
    assert load_dataset(tmp_path / "ours").source == "minilisten"
    assert load_dataset(tmp_path / "ours").n_sa == 1024
    assert load_dataset(tmp_path / "lm").source == "lm-listener"
    assert load_dataset(tmp_path / "l2l", progress=False).source == "learning2listen"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    raises(["no known dataset layout", "meta.json", "segments_{train,val,test}.pth", "p{0,1}_list_faces_clean_deca.npy",
            "readme.txt"], lambda: load_dataset(tmp_path / "empty"))
    raises(["not found"], lambda: load_dataset(tmp_path / "missing"))
    raises(["expected a dataset directory, got a file"], lambda: load_dataset(tmp_path / "empty" / "readme.txt"))


# ==================================================================== ASR-style words, every reader
def test_lm_listener_repairs_asr_words(tmp_path, caplog):
    """Overlapping, zero-length and unsorted words (as ASR gives them) are put in order by end time, starts
    clamped to the previous end, and counted; expected values worked out by hand."""
    d = tmp_path / "asr"
    d.mkdir()
    r = lm_record(0, 60, 300)                       # t0 = 10 s, 2 s long
    r["before_words"] = [{"text": "b1", "end": 9.0}, {"text": "b0", "end": 8.5}]           # b0 out of order
    r["during_words"] = [{"text": "one", "start": 10.1, "end": 10.4},
                         {"text": "two", "start": 10.3, "end": 10.6},     # overlaps 'one': start -> 10.4
                         {"text": "zero", "start": 10.6, "end": 10.6},    # zero length: kept as is
                         {"text": "four", "start": 11.0, "end": 11.2},
                         {"text": "three", "start": 10.7, "end": 10.9}]   # out of order
    for s in ("train", "val", "test"):
        torch.save([r], d / f"segments_{s}.pth")
    with caplog.at_level(logging.WARNING, logger="minilisten.data"):
        c = load_lm_listener(d, splits=("train",))
    seg = c.train[0]
    want = [("one", 0.1, 0.4), ("two", 0.4, 0.6), ("zero", 0.6, 0.6), ("three", 0.7, 0.9), ("four", 1.0, 1.2)]
    assert [w.text for w in seg.words] == [t for t, _, _ in want]
    for w, (_, a, b) in zip(seg.words, want):
        assert w.start == pytest.approx(a) and w.end == pytest.approx(b)
    assert [(w.text, round(w.start, 6), round(w.end, 6)) for w in seg.history_words] == \
        [("b0", -1.8, -1.5), ("b1", -1.3, -1.0)]           # starts estimated: end - 0.3, not before the last end
    assert c.info["repaired_words"] == 3 and "repaired 3 word(s)" in caplog.text


def test_own_format_repairs_asr_words(tmp_path):
    d = tmp_path / "c"
    save_corpus(rich_corpus(), d, progress=False)
    asr = [["a", 0.1, 0.5], ["b", 0.3, 0.8], ["c", 0.9, 0.9], ["e", 1.1, 1.2], ["d", 0.95, 1.0], ["f", 1.3, 1.25]]
    _edit_meta(d, lambda m: m["splits"]["train"][0].update(words=asr))
    c = load_corpus(d)
    got = [(w.text, w.start, w.end) for w in c.train[0].words]
    # b overlaps a (start -> 0.5), d out of order, f starts after its end (start -> 1.25): 3 words changed
    assert got == [("a", 0.1, 0.5), ("b", 0.5, 0.8), ("c", 0.9, 0.9), ("d", 0.95, 1.0), ("e", 1.1, 1.2),
                   ("f", 1.25, 1.25)]
    assert c.info["repaired_words"] == 3
