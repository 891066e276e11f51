"""Video rendering (minilisten.render) and the FLAME reader / forward pass (minilisten.flame)."""
from __future__ import annotations

import json
import pickle
import sys
import types

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from minilisten import flame as fl
from minilisten import render as rd
from minilisten.data.segment import Word

needs_ffmpeg = pytest.mark.skipif(__import__("importlib").util.find_spec("imageio_ffmpeg") is None,
                                  reason="mp4 needs imageio-ffmpeg (pip install 'minilisten[video]')")


def read_mp4(path) -> tuple[np.ndarray, float]:
    """Frames ``(N, H, W, 3)`` uint8 and fps of a video (through imageio-ffmpeg)."""
    import imageio_ffmpeg
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    return np.stack([np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]), float(meta["fps"])

# ----------------------------------------------------------------------------- a tiny FLAME file
N_SHAPE_MODEL, N_EXP_MODEL = 300, 100


def _fake_chumpy(monkeypatch):
    """Modules ``chumpy`` / ``chumpy.ch`` with a class ``Ch`` pickled as ``chumpy.ch.Ch`` and a
    state like chumpy's (``x`` plus bookkeeping), only while the tiny file is written."""
    mod = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x, np.float64)
            self._dirty_vars = {"x"}
            self._itr = None
            self._depends_on_deps = {}
            self._make_dense, self._make_sparse = False, False
    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    mod.Ch = Ch
    pkg = types.ModuleType("chumpy")
    pkg.ch = mod
    monkeypatch.setitem(sys.modules, "chumpy", pkg)
    monkeypatch.setitem(sys.modules, "chumpy.ch", mod)
    return Ch


def tiny_flame_arrays(seed: int = 0) -> dict:
    """FLAME's keys and per-vertex shapes on a 6 x 8 UV ellipsoid (42 vertices, head-sized in
    metres): 5 joints (root, neck, jaw, eyes) at chosen vertices (one-hot J_regressor rows), the
    lower front vertices skinned to the jaw (two of them half to the root), random small blend shapes."""
    rng = np.random.default_rng(seed)
    v, f = rd._ellipsoid(6, 8, (0.08, 0.11, 0.09), (0, 0, 0))
    V = len(v)
    J = fl.N_JOINTS
    root = int(np.argmin(v[:, 1]))                                              # bottom pole
    neck = int(np.argmin(np.abs(v[:, 1] + 0.06) + np.abs(v[:, 2] + 0.05) + np.abs(v[:, 0])))
    front_low = np.nonzero((v[:, 1] < -0.02) & (v[:, 2] > 0.02))[0]
    jaw = int(np.argmin(np.abs(v[:, 1]) + np.abs(v[:, 2] + 0.09)))               # back, at mid height
    eyes = [int(np.argmin(np.abs(v[:, 0] - s * 0.03) + np.abs(v[:, 1] - 0.03) - v[:, 2])) for s in (1, -1)]
    jr = np.zeros((J, V))
    for j, i in enumerate([root, neck, jaw] + eyes):
        jr[j, i] = 1.0
    w = np.zeros((V, J))
    w[:, 0] = 1.0
    w[front_low] = [0, 0, 1, 0, 0]
    w[front_low[:2]] = [0.5, 0, 0.5, 0, 0]
    return dict(
        v_template=v, f=f.astype(np.uint32),
        shapedirs=rng.normal(0, 1e-3, (V, 3, N_SHAPE_MODEL + N_EXP_MODEL)),
        posedirs=rng.normal(0, 1e-3, (V, 3, 9 * (J - 1))),
        J_regressor=jr, weights=w,
        kintree_table=np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
        J=jr @ v, bs_style="lbs", bs_type="lrotmin")


def write_tiny_flame(path, monkeypatch, protocol: int = 2, arrays: dict | None = None) -> dict:
    """``path``: a pickle laid out like generic_model.pkl (shapedirs/posedirs/v_template as
    chumpy.ch.Ch, J_regressor a scipy.sparse csc_matrix). Returns the plain arrays."""
    import scipy.sparse as sp
    a = arrays or tiny_flame_arrays()
    Ch = _fake_chumpy(monkeypatch)
    obj = dict(a)
    for k in ("shapedirs", "posedirs", "v_template"):
        obj[k] = Ch(a[k])
    obj["J_regressor"] = sp.csc_matrix(a["J_regressor"])
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    monkeypatch.delitem(sys.modules, "chumpy")
    monkeypatch.delitem(sys.modules, "chumpy.ch")
    return a


def R(aa):
    return Rotation.from_rotvec(aa).as_matrix()


@pytest.mark.parametrize("protocol", [0, 2, 4])   # 0: copyreg._reconstructor; 2+: NEWOBJ (as Python 2 wrote it)
def test_flame_reader_on_tiny_file(tmp_path, monkeypatch, protocol):
    p = tmp_path / "generic_model.pkl"
    a = write_tiny_flame(p, monkeypatch, protocol)
    d = fl.read_flame_pickle(p)
    assert "chumpy" not in sys.modules
    for k in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "f", "kintree_table"):
        np.testing.assert_array_equal(d[k], a[k], err_msg=k)
    assert d["bs_style"] == "lbs"
    m = fl.load_flame(p)
    assert m.shapedirs.shape == (len(a["v_template"]), 3, N_SHAPE_MODEL) and m.expdirs.shape[2] == N_EXP_MODEL
    assert m.parents.tolist() == [-1, 0, 1, 1, 1]


def test_flame_lbs_matches_hand_computation(tmp_path, monkeypatch):
    a = write_tiny_flame(tmp_path / "m.pkl", monkeypatch)
    m = fl.load_flame(tmp_path / "m.pkl")
    rng = np.random.default_rng(1)
    beta, exp = rng.normal(size=100), rng.normal(size=(1, 50))
    g, j = np.array([0.2, -0.3, 0.1]), np.array([0.25, 0.02, -0.05])
    # hand: shape + expression blend shapes, joints from the shaped template
    vs = a["v_template"] + a["shapedirs"][:, :, :100] @ beta + a["shapedirs"][:, :, 300:350] @ exp[0]
    Jt = a["J_regressor"] @ vs
    # pose blend shapes: only the jaw (joint 2, features 9..17) rotates among the non-root joints
    vp = vs + a["posedirs"][:, :, 9:18] @ (R(j) - np.eye(3)).ravel()
    # jaw vertices: rotate about the jaw joint, then everything about the root
    about_jaw = (vp - Jt[2]) @ R(j).T + Jt[2]
    wj = a["weights"][:, 2:3]
    local = (1 - wj) * vp + wj * about_jaw
    want = (local - Jt[0]) @ R(g).T + Jt[0]
    got = m.vertices(exp, np.concatenate([g, j])[None], beta)[0]
    np.testing.assert_allclose(got, want, atol=1e-10)
    # no pose, no shape: the template; global rotation only: a rigid rotation about the root joint
    np.testing.assert_allclose(m.vertices(np.zeros((1, 0)), np.zeros((1, 6)))[0], a["v_template"], atol=1e-12)
    rot = m.vertices(np.zeros((1, 0)), np.concatenate([g, [0, 0, 0]])[None])[0]
    J0 = a["J_regressor"][0] @ a["v_template"]
    np.testing.assert_allclose(rot, (a["v_template"] - J0) @ R(g).T + J0, atol=1e-12)
    # motion layout: exp [0:50] | global [50:53] | jaw [53:56]
    motion = np.concatenate([exp[0], g, j])[None]
    np.testing.assert_allclose(m.motion_vertices(motion, beta)[0], want, atol=1e-10)


def test_rodrigues_matches_scipy():
    aa = np.random.default_rng(0).normal(size=(20, 3))
    aa[0] = 0
    aa[1] = [1e-9, 0, 0]
    np.testing.assert_allclose(fl.rodrigues(aa), Rotation.from_rotvec(aa).as_matrix(), atol=1e-12)


def _evil(tmp_path, obj_bytes: bytes):
    p = tmp_path / "evil.pkl"
    p.write_bytes(obj_bytes)
    return p


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        import os
        return (os.system, (self.cmd,))


@pytest.mark.parametrize("kind", ["os.system", "reconstructor", "chumpy-op", "nested"])
def test_malicious_flame_pickle_refused(tmp_path, monkeypatch, kind):
    marker = tmp_path / "pwned"
    if kind == "os.system":
        data = pickle.dumps({"v_template": _System(f"touch {marker}")}, protocol=2)
    elif kind == "nested":   # the payload inside a chumpy object's state
        Ch = _fake_chumpy(monkeypatch)
        ch = Ch(np.zeros(3))
        ch.x = _System(f"touch {marker}")
        data = pickle.dumps({"shapedirs": ch}, protocol=2)
        monkeypatch.delitem(sys.modules, "chumpy.ch")
    elif kind == "reconstructor":   # copyreg._reconstructor asked to build a non-placeholder class
        data = b"ccopy_reg\n_reconstructor\n(cnumpy\nndarray\nc__builtin__\nobject\nNtR."
    else:   # another chumpy class: its pickle would run chumpy code; refused
        data = b"\x80\x02cchumpy.ch_ops\nadd\nq\x00)\x81q\x01."
    p = _evil(tmp_path, data)
    with pytest.raises(ValueError, match="refused") as e:
        fl.load_flame(p)
    assert str(p) in str(e.value)
    assert not marker.exists()


def test_flame_file_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="no such file"):
        fl.load_flame(tmp_path / "missing.pkl")
    a = tiny_flame_arrays()
    a.pop("weights")
    write_tiny_flame(tmp_path / "m.pkl", monkeypatch, arrays=a)
    with pytest.raises(ValueError, match="missing key.*weights"):
        fl.load_flame(tmp_path / "m.pkl")
    a = tiny_flame_arrays()
    a["posedirs"] = a["posedirs"][:, :, :30]
    write_tiny_flame(tmp_path / "m2.pkl", monkeypatch, arrays=a)
    with pytest.raises(ValueError, match=r"posedirs.*expected shape \(\d+, 3, 36\), got \(\d+, 3, 30\)"):
        fl.load_flame(tmp_path / "m2.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="junk.pkl"):
        fl.load_flame(tmp_path / "junk.pkl")


# ----------------------------------------------------------------------------- rasteriser
def test_rasterizer_coverage_and_depth_against_reference():
    from matplotlib.path import Path as MPath
    H = W = 40
    tri = np.array([[3.2, 5.1, 1.0], [35.7, 12.3, 1.0], [12.4, 33.9, 1.0]])
    # a triangle and a second, nearer one overlapping it (no culling)
    tri2 = np.array([[20.0, 2.0, 2.0], [38.0, 30.0, 2.0], [20.0, 30.0, 2.0]])
    verts = np.concatenate([tri, tri2])
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    cols = np.array([[1, 0, 0]] * 3 + [[0, 1, 0]] * 3, np.float64)
    img = rd.rasterize(verts, faces, cols, H, W, cull=False)
    yy, xx = np.mgrid[0:H, 0:W]
    centres = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], 1)
    in1 = MPath(tri[:, :2]).contains_points(centres).reshape(H, W)
    in2 = MPath(tri2[:, :2]).contains_points(centres).reshape(H, W)
    green = img[..., 1] > 0.5
    red = img[..., 0] > 0.5
    assert (green == in2).mean() > 0.99 and (red == (in1 & ~in2)).mean() > 0.99
    assert ((img.sum(-1) > 0) == (in1 | in2)).mean() > 0.99
    # the nearer triangle wins whatever the face order
    np.testing.assert_array_equal(rd.rasterize(verts, faces[::-1], cols, H, W, cull=False), img)
    # culling: kept when counter-clockwise as seen (negative signed area in y-down pixels)
    assert rd.rasterize(tri, np.array([[0, 1, 2]]), cols[:3], H, W).sum() == 0
    assert rd.rasterize(tri, np.array([[0, 2, 1]]), cols[:3], H, W).sum() > 0


# ----------------------------------------------------------------------------- schematic head
def _dark_centroid(frame):
    """(x, y) centroid of the eye/brow/mouth pixels of a schematic panel on a white background."""
    h = rd.SchematicHead()
    v, f, a = h.frame_mesh(frame)
    img = rd.draw_mesh(v, f, a, 128, h.CENTER, 128 / h.SPAN, (1, 1, 1), 1)
    dark = img.mean(-1) < 0.15         # pupils, brows, mouth (shaded skin stays above 0.2)
    ys, xs = np.nonzero(dark[:90])           # the face, above the neck
    return xs.mean(), ys.mean(), dark


def test_schematic_head_turns_the_right_way():
    z = np.zeros(56)
    x0, y0, _ = _dark_centroid(z)
    yaw = z.copy()
    yaw[51] = 0.4                 # FLAME: + yaw about y turns the face to the image's right
    assert _dark_centroid(yaw)[0] > x0 + 3
    pitch = z.copy()
    pitch[50] = 0.3               # + pitch about x: head down (face features move down on screen)
    assert _dark_centroid(pitch)[1] > y0 + 3
    roll = z.copy()
    roll[52] = 0.3                # + roll about z (towards the camera): counter-clockwise on screen
    _, _, dark = _dark_centroid(roll)
    pupils = np.nonzero(dark[20:58])        # eyes and brows (eyes at row ~41, mouth at ~70)
    mid = pupils[1].mean()                   # the head moved left: split the two eyes at their middle
    left, right = pupils[0][pupils[1] < mid].mean(), pupils[0][pupils[1] >= mid].mean()
    assert right < left - 2       # the image-right eye is higher
    # the jaw opens the mouth: more dark mouth pixels
    jaw = z.copy()
    jaw[53] = 0.25
    assert _dark_centroid(jaw)[2][70:100].sum() > _dark_centroid(z)[2][70:100].sum() + 20


def test_schematic_expression_moves_brows_and_mouth():
    h = rd.SchematicHead()
    z = np.zeros(56)
    v0 = h.frame_mesh(z)[0]
    up = z.copy()
    up[1] = 1.0
    n_static = len(h._static)          # vertices: static head parts | 2 brows of 12 | lips 2n | mouth 2n | body
    brow = slice(n_static, n_static + 12)
    assert (h.frame_mesh(up)[0][brow, 1] > v0[brow, 1] + 0.03).all()
    smile = z.copy()
    smile[0] = 1.0
    mouth = n_static + 24 + 2 * h.N_MOUTH
    corners = [mouth, mouth + h.N_MOUTH - 1]
    assert (h.frame_mesh(smile)[0][corners, 1] > v0[corners, 1] + 0.03).all()


# ----------------------------------------------------------------------------- subtitles, frames, video
def test_subtitle_timing():
    words = [Word("hello", 0.5, 0.9), Word("world", 1.0, 1.4), Word("again", 4.0, 4.3)]
    assert rd.subtitle_at(words, 0.45) == ([], None)
    assert rd.subtitle_at(words, 0.5) == (words[:1], 0)           # from its start
    assert rd.subtitle_at(words, 0.95) == (words[:1], None)       # said, in a pause
    assert rd.subtitle_at(words, 1.05) == (words[:2], 1)
    assert rd.subtitle_at(words, 2.45, hold=1.5) == (words[1:2], None)   # 'hello' ended > 1.5 s ago
    assert rd.subtitle_at(words, 3.0, hold=1.5) == ([], None)
    assert rd.subtitle_at(words, 4.1) == (words[2:], 0)
    # a narrow band keeps the latest words
    assert rd.subtitle_at(words, 1.05, max_width=rd.text_width("world") + 2) == (words[1:2], 0)
    # frame i shows (i + 0.5) / fps: at 10 fps 'hello' (0.5-0.9 s) is spoken in frames 5..8
    t = rd.frame_times(12, 10.0)
    spoken = [i for i in range(12) if rd.subtitle_at(words, t[i]) == (words[:1], 0)]
    assert spoken == [5, 6, 7, 8]


def test_text_drawing():
    from PIL import Image, ImageDraw
    im = Image.new("RGB", (100, 30))
    end = rd.draw_text(ImageDraw.Draw(im), "Hi!", 10, 2, (255, 255, 255))
    img = np.asarray(im)
    assert end == 10 + rd.text_width("Hi!") and rd.text_width("") == 0
    assert rd.text_width("Hi!") > rd.text_width("Hi") > rd.text_width("H") > 0
    ys, xs = np.nonzero(img[..., 0] > 128)
    assert xs.min() >= 9 and xs.max() < end + 2 and ys.min() >= 2 and ys.max() < 2 + rd.FONT_HEIGHT
    im = Image.new("RGB", (60, 30))
    rd.draw_text(ImageDraw.Draw(im), "é", 5, 2)                    # beyond ASCII: a glyph, not a box or nothing
    assert 0 < (np.asarray(im)[..., 0] > 128).sum() < 0.5 * 25 * rd.text_width("é")


def _motions(T, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.normal(0, 0.05, (3, T, 56))
    m[1, :, 51] = np.linspace(-0.3, 0.3, T)
    return m


def test_frames_shape_dtype_and_layout():
    spk, gen, gt = _motions(3)
    frames = list(rd.render_frames(spk, {"generated": gen, "ground truth": gt}, [("hi", 0.0, 0.05)], 30, size=64,
                                   ssaa=1))
    assert len(frames) == 3
    assert frames[0].shape == (64 + rd.TITLE_H + rd.SUB_H, 3 * 64, 3) and frames[0].dtype == np.uint8
    # the subtitle band shows the word at frame 0 (t = 1/60 s)
    band = frames[0][rd.TITLE_H + 64:].astype(float)
    assert band.max() > 200


@needs_ffmpeg
def test_mp4_written_and_read_back(tmp_path):
    T, fps = 12, 25.0
    spk, gen, gt = _motions(T)
    out = rd.render_clip(spk, {"generated": gen, "ground truth": gt}, [Word("yes", 0.1, 0.3)], fps,
                         tmp_path / "clip.mp4", size=64, progress=False, still=5, ssaa=1)
    frames, got_fps = read_mp4(out)
    assert frames.shape == (T, 64 + rd.TITLE_H + rd.SUB_H, 192, 3) and got_fps == pytest.approx(fps)
    want = np.stack(list(rd.render_frames(spk, {"generated": gen, "ground truth": gt}, [Word("yes", 0.1, 0.3)], fps,
                                          size=64, ssaa=1)))
    assert np.abs(frames.astype(float) - want).mean() < 6          # lossy H.264, same pictures
    import matplotlib.image as mpimg  # the still: frame 5, lossless PNG
    still = (mpimg.imread(tmp_path / "clip.png")[..., :3] * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(still, want[5])
    assert not list(tmp_path.glob(".clip*"))                       # no temporary file left


def test_flame_frames_render(tmp_path, monkeypatch):
    write_tiny_flame(tmp_path / "m.pkl", monkeypatch)
    m = fl.load_flame(tmp_path / "m.pkl")
    spk, gen, _ = _motions(2)
    fr = list(rd.render_frames(spk, {"generated": gen}, [], 30, flame=m, beta=np.zeros(100), size=64, ssaa=1))
    assert fr[0].shape == (64 + rd.TITLE_H + rd.SUB_H, 128, 3)
    panel = fr[0][rd.TITLE_H:rd.TITLE_H + 64, :64].astype(float)
    assert (np.abs(panel - panel[0, 0]).sum(-1) > 30).mean() > 0.2   # a head covers the panel's middle


@pytest.mark.parametrize("kw, msg", [
    (dict(speaker_motion=np.zeros((5, 55))), r"speaker_motion: expected shape \(T, 56\), got \(5, 55\)"),
    (dict(listener_motions={"gen": np.zeros((4, 56))}),
     r"listener_motions\['gen'\]: expected shape \(5, 56\), got \(4, 56\)"),
    (dict(listener_motions={"gen": np.zeros((5, 6))}),
     r"listener_motions\['gen'\]: expected shape \(5, 56\), got \(5, 6\)"),
    (dict(listener_motions={}), r"listener_motions: expected a non-empty dict"),
    (dict(beta=np.zeros(99)), r"beta: expected shape \(100,\), got \(99,\)"),
    (dict(fps=0), r"fps: expected a positive number, got 0"),
    (dict(words=[("a", 0.5, 0.2)]), r"words\[0\] \('a'\): expected start <= end"),
    (dict(words="hello"), r"words: expected a list"),
    (dict(size=50), r"size: expected a multiple of 16"),
])
def test_bad_inputs_name_the_argument(kw, msg):
    args = dict(speaker_motion=np.zeros((5, 56)), listener_motions={"gen": np.zeros((5, 56))}, words=[], fps=30.0)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        next(rd.render_frames(**args))


# ----------------------------------------------------------------------------- CLI
@needs_ffmpeg
def test_cli_from_saved_arrays(tmp_path, capsys):
    from minilisten.__main__ import main
    spk, gen, gt = _motions(6)
    np.save(tmp_path / "spk.npy", spk)
    np.savez(tmp_path / "lis.npz", gen=gen, gt=gt)
    (tmp_path / "w.json").write_text(json.dumps([{"text": "ok", "start": 0.0, "end": 0.2}]))
    rc = main(["render", "--speaker", str(tmp_path / "spk.npy"), "--listener", f"ours={tmp_path / 'lis.npz'}:gen",
               "--gt", f"{tmp_path / 'lis.npz'}:gt", "--words", str(tmp_path / "w.json"), "--fps", "10",
               "--size", "64", "--ssaa", "1", "--still", "1", "--no-progress", "--out", str(tmp_path / "o.mp4")])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    frames, fps = read_mp4(tmp_path / "o.mp4")
    assert frames.shape[:3] == (6, 64 + rd.TITLE_H + rd.SUB_H, 192) and fps == 10
    assert (tmp_path / "o.png").exists()
    # bad input: one line naming the option / file
    np.save(tmp_path / "bad.npy", np.zeros((6, 50)))
    rc = main(["render", "--speaker", str(tmp_path / "bad.npy"), "--gt", str(tmp_path / "spk.npy"),
               "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert rc == 2 and "speaker_motion: expected shape (T, 56), got (6, 50)" in err
    rc = main(["render", "--speaker", str(tmp_path / "spk.npy"), "--gt", str(tmp_path / "lis.npz"),
               "--out", str(tmp_path / "x.mp4")])
    assert rc == 2 and "FILE.npz:KEY" in capsys.readouterr().err


@needs_ffmpeg
def test_cli_from_models(tmp_path, capsys):
    from conftest import tiny_lm, tiny_vq

    from minilisten.__main__ import main
    vq, lm = tiny_vq("none"), tiny_lm("gpt2", n_lr=tiny_vq("none").config.codebook_size, n_sa=129, n_positions=1024)
    vq.save_pretrained(tmp_path / "vq")
    lm.save_pretrained(tmp_path / "lm")
    rc = main(["render", "--vq", str(tmp_path / "vq"), "--lm", str(tmp_path / "lm"), "--corpus", "default",
               "--identities", "2", "--segments", "20", "--seconds", "12", "--clip", "0", "--size", "64",
               "--ssaa", "1", "--no-progress", "--out", str(tmp_path / "m.mp4")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    frames, fps = read_mp4(tmp_path / "m.mp4")
    assert frames.shape[:3] == (240, 64 + rd.TITLE_H + rd.SUB_H, 192) and fps == 30
    # --vq/--lm/--name pair up in order; a --vq without its --lm is refused before any data is built
    rc = main(["render", "--vq", str(tmp_path / "vq"), "--vq", str(tmp_path / "vq"), "--lm", str(tmp_path / "lm"),
               "--out", str(tmp_path / "x.mp4")])
    assert rc == 2 and "expected one --lm and at most one --name per --vq" in capsys.readouterr().err


def test_words_file_errors_name_the_file(tmp_path):
    p = tmp_path / "w.json"
    p.write_text(json.dumps([["a", 0.5, 0.2]]))
    with pytest.raises(ValueError, match=r"--words .*w\.json\[0\] \('a'\): expected start <= end"):
        rd.load_words(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match=r"--words .*w\.json: expected a JSON file"):
        rd.load_words(p)
    p.write_text(json.dumps([{"text": "ok", "start": 0, "end": 0.2}, ["then", 0.3, 0.5]]))
    assert rd.load_words(p) == [Word("ok", 0.0, 0.2), Word("then", 0.3, 0.5)]
