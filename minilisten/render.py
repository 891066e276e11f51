"""Video of speaker | generated listener(s) | ground truth with the speaker's words as subtitles (``python -m
minilisten render``, :func:`render_clip`): heads from motion ``(T, 56)`` (expression 50 | global rotation 3 | jaw 3)
rasterised in numpy, the FLAME mesh (:mod:`minilisten.flame`) or :class:`SchematicHead` (docs/video.md); text and PNG
with Pillow, mp4 with imageio-ffmpeg. Frame ``i`` shows time ``(i + 0.5) / fps``."""
from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import json
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from .cli_config import ArgumentParser
from .data.segment import D_MOTION, EXP, N_SHAPE, POSE, Segment, Word, _check_array, check_word
from .errors import UserError

FONT_HEIGHT = 25   # Pillow's default font (Aileron Regular) at size 20: ascent 20 + descent 5


@functools.lru_cache(maxsize=1)
def _font():
    from PIL import ImageFont
    return ImageFont.load_default(size=20)


def text_width(text: str) -> int:
    """Width in pixels of ``text`` in the subtitle font."""
    return int(math.ceil(_font().getlength(text)))


def draw_text(draw, text: str, x: int, y: int, color=(255, 255, 255)) -> int:
    """Draw ``text`` on a ``PIL.ImageDraw`` with its top-left at ``(x, y)``; returns the x after the text."""
    draw.text((x, y), text, fill=tuple(color), font=_font())
    return x + text_width(text)


def frame_times(n_frames: int, fps: float) -> np.ndarray:
    """Time in seconds each frame shows: the middle of the frame, ``(i + 0.5) / fps``."""
    return (np.arange(n_frames) + 0.5) / fps


def subtitle_at(words: list[Word], t: float, hold: float = 1.5, max_width: int | None = None):
    """``(shown, i)``: the words started by ``t`` and ended less than ``hold`` s before it (the latest that fit in
    ``max_width`` pixels), and the index in ``shown`` of the word being spoken (None in a pause)."""
    shown = [w for w in words if w.start <= t and t - w.end < hold]
    if max_width is not None:
        keep, width = [], 0
        for w in reversed(shown):
            width += text_width(w.text) + (text_width(" ") if keep else 0)
            if keep and width > max_width:
                break
            keep.append(w)
        shown = keep[::-1]
    active = next((i for i, w in enumerate(shown) if w.start <= t < w.end), None)
    return shown, active


def rasterize(verts: np.ndarray, faces: np.ndarray, colors: np.ndarray, height: int, width: int,
              background=(0.0, 0.0, 0.0), cull: bool = True) -> np.ndarray:
    """Z-buffered triangles -> image ``(height, width, 3)`` float32: ``verts (V, 3)`` in pixels (x right, y down,
    z = depth, larger is nearer), ``faces (F, 3)``, ``colors (V, 3)`` interpolated; a pixel is covered when its
    centre is inside a triangle (edges included); ``cull`` skips those wound clockwise as seen by the camera."""
    img = np.full((height, width, 3), background, np.float32)
    tri = verts[faces].astype(np.float64)                                 # (F, 3, 3)
    x, y, z = tri[..., 0], tri[..., 1], tri[..., 2]
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
    x0 = np.clip(np.floor(x.min(1) - 0.5) + 1, 0, width).astype(np.int64)       # first pixel whose centre >= min x
    x1 = np.clip(np.floor(x.max(1) - 0.5), -1, width - 1).astype(np.int64)      # last pixel whose centre <= max x
    y0 = np.clip(np.floor(y.min(1) - 0.5) + 1, 0, height).astype(np.int64)
    y1 = np.clip(np.floor(y.max(1) - 0.5), -1, height - 1).astype(np.int64)
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    keep = (bw > 0) & (bh > 0) & ((area < -1e-12) if cull else (np.abs(area) > 1e-12))
    fid = np.nonzero(keep)[0]
    # barycentric coordinates and depth are affine in the pixel position: l_k = ex x + ey y + e0
    ar = area[fid]
    p = [(1, 2), (2, 0), (0, 1)]
    ex = np.stack([(y[fid, i] - y[fid, j]) / ar for i, j in p], 1)
    ey = np.stack([(x[fid, j] - x[fid, i]) / ar for i, j in p], 1)
    e0 = np.stack([(x[fid, i] * y[fid, j] - y[fid, i] * x[fid, j]) / ar for i, j in p], 1)
    zx, zy, z0 = ((e * z[fid]).sum(1) for e in (ex, ey, e0))
    # scanlines: for each (face, pixel row) the span of pixel centres inside the triangle, where
    # every l_k(x, cy) = ex_k x + (ey_k cy + e0_k) >= 0
    nrow = bh[fid]
    k = np.repeat(np.arange(len(fid)), nrow)                              # (R,) index into fid
    row = y0[fid][k] + np.arange(len(k)) - np.repeat(np.cumsum(nrow) - nrow, nrow)
    off = ey[k] * (row + 0.5)[:, None] + e0[k] + 1e-9                     # (R, 3)
    exk = ex[k]
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = -off / exk
    lo = np.where(exk > 0, bound, -np.inf).max(1)
    hi = np.where(exk < 0, bound, np.inf).min(1)
    hi = np.where(((exk == 0) & (off < 0)).any(1), -np.inf, hi)           # a row outside an edge parallel to it
    px0 = np.maximum(np.ceil(np.clip(lo, -1.0, width + 2.0) - 0.5), x0[fid][k]).astype(np.int64)
    px1 = np.minimum(np.floor(np.clip(hi, -2.0, width + 1.0) - 0.5), x1[fid][k]).astype(np.int64)
    cnt = np.maximum(px1 - px0 + 1, 0)
    pix = np.repeat(row * width + px0, cnt) + np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    k = np.repeat(k, cnt)
    cx, cy = pix % width + 0.5, pix // width + 0.5
    depth = zx[k] * cx + zy[k] * cy + z0[k]
    zbuf = np.full(height * width, -np.inf)
    np.maximum.at(zbuf, pix, depth)
    win = depth >= zbuf[pix]
    k, pix, cx, cy = k[win], pix[win], cx[win], cy[win]
    lam = ex[k] * cx[:, None] + ey[k] * cy[:, None] + e0[k]              # (N, 3)
    img.reshape(-1, 3)[pix] = np.einsum("nk,nkc->nc", lam, colors[faces[fid[k]]])
    return img


LIGHT = np.array([-0.35, 0.45, 1.0]) / np.linalg.norm([-0.35, 0.45, 1.0])   # from the upper left, in front
AMBIENT = 0.28


def draw_mesh(verts: np.ndarray, faces: np.ndarray, albedo: np.ndarray, size: int, center, scale: float,
              background, ssaa: int = 2) -> np.ndarray:
    """Orthographic view of a world-space mesh (camera on +z looking at ``center``; ``scale`` pixels per world unit)
    -> float image ``(size, size, 3)`` (``ssaa``: supersampling per side), Lambert-shaded per vertex with
    area-weighted normals of faces wound counter-clockwise seen from outside."""
    tri = verts[faces]
    vn = np.zeros_like(verts)
    np.add.at(vn, faces.T.ravel(), np.tile(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), (3, 1)))
    vn /= np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)
    cols = albedo * (AMBIENT + (1 - AMBIENT) * np.clip(vn @ LIGHT, 0.0, 1.0))[:, None]
    S, s = size * ssaa, scale * ssaa
    p = np.column_stack([S / 2 + s * (verts[:, 0] - center[0]), S / 2 - s * (verts[:, 1] - center[1]), verts[:, 2]])
    return rasterize(p, faces, cols, S, S, background).reshape(size, ssaa, size, ssaa, 3).mean((1, 3))


def _ellipsoid(n_lat: int, n_lon: int, radii, center) -> tuple[np.ndarray, np.ndarray]:
    """UV ellipsoid: vertices ``((n_lat + 1) n_lon, 3)``, faces outward-wound; longitude 0 faces +z."""
    th = np.linspace(0, np.pi, n_lat + 1)[:, None]
    ph = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)[None]
    unit = np.stack([np.sin(th) * np.sin(ph), np.cos(th) + 0 * ph, np.sin(th) * np.cos(ph)], -1).reshape(-1, 3)
    i, j = np.divmod(np.arange(n_lat * n_lon), n_lon)
    a, d = i * n_lon + j, i * n_lon + (j + 1) % n_lon     # a vertex and its neighbour in longitude
    faces = _outward(unit, np.concatenate([np.stack([a, a + n_lon, d + n_lon], 1), np.stack([a, d + n_lon, d], 1)]))
    return unit * np.asarray(radii) + np.asarray(center), faces


def _outward(unit_verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flip every face whose normal points towards the origin (a star-shaped closed surface)."""
    tri = unit_verts[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = (n * tri.mean(1)).sum(1) < 0
    return np.where(flip[:, None], faces[:, ::-1], faces)


def _strip_faces(n: int) -> np.ndarray:
    """Faces of a strip between two polylines of ``n`` points (top ``0..n-1``, bottom ``n..2n-1``),
    counter-clockwise seen from +z when the top line is above the bottom one and runs in +x."""
    t = np.arange(n - 1)
    return np.concatenate([np.stack([t, t + n, t + n + 1], 1), np.stack([t, t + n + 1, t + 1], 1)])


SKIN = (0.86, 0.69, 0.58)
HEAD_R = (0.74, 0.95, 0.82)            # head ellipsoid radii (x, y, z), world units
HEAD_PIVOT = np.array([0.0, -0.78, -0.12])   # the global rotation turns the head about the top of the neck
JAW_PIVOT = np.array([0.0, -0.12, -0.25])    # jaw hinge (below the ears)


def _surface_z(x, y, lift: float = 0.0):
    """z of the head ellipsoid's front surface at ``(x, y)`` plus ``lift``."""
    a, b, c = HEAD_R
    return c * np.sqrt(np.clip(1 - (x / a) ** 2 - (y / b) ** 2, 0.0, 1.0)) + lift


def _smoothstep(x, lo, hi):
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


class SchematicHead:
    """A low-poly head, neck and shoulders moved by a motion frame (no FLAME model; docs/results.md "Rendering"):
    ``frame_mesh(frame56)`` -> ``(verts (V, 3), faces (F, 3), albedo (V, 3))`` in world units (head radius ~1, y up,
    z to the camera)."""

    N_MOUTH = 13

    def __init__(self, shirt=(0.30, 0.42, 0.62)):
        v, f = _ellipsoid(18, 28, HEAD_R, (0, 0, 0))
        self._n_head = len(v)
        parts = [(v, f, SKIN)]   # (verts, faces, color) of the parts that turn with the head
        # jaw skinning weight of each head vertex: below the mouth line and in front of the hinge
        self._jaw_w = _smoothstep(-v[:, 1], 0.12, 0.42) * _smoothstep(v[:, 2], -0.35, 0.25)
        for sx in (-1, 1):
            parts.append((*_ellipsoid(6, 10, (0.07, 0.17, 0.11), (sx * 0.72, 0.02, -0.08)), (0.80, 0.62, 0.52)))
        # nose: a cone from the face to its tip
        ang = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        x, y = 0.09 * np.cos(ang), 0.02 + 0.11 * np.sin(ang)
        vn = np.concatenate([np.stack([x, y, _surface_z(x, y, -0.03)], 1), [[0.0, -0.1, _surface_z(0.0, -0.1) + 0.17]]])
        fn = np.stack([np.arange(10), (np.arange(10) + 1) % 10, np.full(10, 10)], 1)
        parts.append((vn, _outward(vn - vn[:10].mean(0), fn), (0.82, 0.64, 0.54)))
        # eyes: white ball + dark pupil
        for sx in (-1, 1):
            x, y, z = sx * 0.27, 0.2, _surface_z(sx * 0.27, 0.2)
            parts.append((*_ellipsoid(8, 12, (0.105, 0.07, 0.05), (x, y, z - 0.015)), (0.95, 0.95, 0.93)))
            parts.append((*_ellipsoid(6, 10, (0.045, 0.045, 0.03), (x, y, z + 0.025)), (0.12, 0.10, 0.10)))
        # dynamic parts (vertices rebuilt per frame): two brows, lips, mouth interior; then the body (not moved by
        # the head pose): neck + shoulders
        n = self.N_MOUTH
        dyn = [(np.zeros((12, 3)), _strip_faces(6), (0.30, 0.20, 0.15))] * 2
        dyn += [(np.zeros((2 * n, 3)), _strip_faces(n), c) for c in ((0.72, 0.35, 0.35), (0.22, 0.05, 0.07))]
        body = [(*_ellipsoid(6, 20, (0.33, 0.55, 0.33), (0, -1.2, -0.12)), (0.80, 0.62, 0.52)),
                (*_ellipsoid(10, 28, (1.35, 0.55, 0.62), (0, -2.05, -0.15)), shirt)]
        every = parts + dyn + body
        offsets = np.cumsum([0] + [len(v) for v, _, _ in every])
        self.faces = np.concatenate([f + o for (_, f, _), o in zip(every, offsets)]).astype(np.int64)
        self.albedo = np.concatenate([np.tile(c, (len(v), 1)) for v, _, c in every]).astype(np.float64)
        self._static = np.concatenate([v for v, _, _ in parts])
        self._body = np.concatenate([v for v, _, _ in body])

    def frame_mesh(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``frame (56,)`` -> ``(verts, faces, albedo)``."""
        from .flame import rodrigues
        frame = np.asarray(frame, np.float64)
        smile, brow, frown, width = np.tanh(frame[EXP][:4])
        pose = frame[POSE]
        Rj = rodrigues(pose[3:6])
        jaw = lambda p, w: p + w[:, None] * ((p - JAW_PIVOT) @ Rj.T + JAW_PIVOT - p)   # noqa: E731
        v = self._static.copy()
        v[:self._n_head] = jaw(v[:self._n_head], self._jaw_w)
        # brows: 6 points along each brow, two rows (thickness)
        brows = []
        for sx in (-1, 1):
            u = np.linspace(0, 1, 6)[::sx]           # inner -> outer, reversed on the left: the strip runs in +x
            x = sx * (0.10 + 0.30 * u)
            y = 0.37 + 0.05 * np.sin(np.pi * u) + 0.07 * brow - 0.06 * frown * (1 - u)
            brows += [np.stack([x, y + d, _surface_z(x, y + d, 0.02)], 1) for d in (0.025, -0.025)]
        # mouth: upper lip line, lower lip line dropped by the jaw; lips = a wider band behind
        u = np.linspace(-1, 1, self.N_MOUTH)
        x = 0.25 * (1 + 0.25 * width + 0.12 * smile) * u
        y_m = -0.45 + 0.09 * smile * u ** 2
        up, lo = (np.stack([x, y_m + d, _surface_z(x, y_m + d)], 1) for d in (0.012, -0.012))
        lo = jaw(lo, 1 - u ** 2)   # the lower lip follows the chin (its corners stay)
        lip_up = up + np.array([0, 0.045, 0]) * (1 - u ** 2)[:, None] ** 0.5
        lip_lo = lo - np.array([0, 0.05, 0]) * (1 - u ** 2)[:, None] ** 0.5
        for pts, lift in ((up, 0.035), (lo, 0.035), (lip_up, 0.02), (lip_lo, 0.02)):
            pts[:, 2] = _surface_z(pts[:, 0], pts[:, 1], lift)
        head = np.concatenate([v, *brows, lip_up, lip_lo, up, lo])
        head = (head - HEAD_PIVOT) @ rodrigues(pose[0:3]).T + HEAD_PIVOT
        return np.concatenate([head, self._body]), self.faces, self.albedo

    #: camera of the schematic panels (world point at the panel centre, world units across a panel)
    CENTER = (0.0, -0.32)
    SPAN = 2.9


def _panels(motion: np.ndarray, role: str, beta, flame, size: int, ssaa: int,
            background=(0.16, 0.17, 0.19)) -> Iterator[np.ndarray]:
    """One panel ``(size, size, 3)`` float per frame of ``motion (T, 56)``: the FLAME mesh with ``flame``, else
    a :class:`SchematicHead` (grey shirt for the speaker, blue for a listener)."""
    if flame is None:
        head = SchematicHead(shirt=(0.42, 0.42, 0.45) if role == "speaker" else (0.30, 0.42, 0.62))
        for fr in motion:
            v, f, a = head.frame_mesh(fr)
            yield draw_mesh(v, f, a, size, head.CENTER, size / head.SPAN, background, ssaa)
        return
    rest = flame.vertices(np.zeros((1, 0)), np.zeros((1, 6)), beta)[0]
    lo, hi = rest.min(0), rest.max(0)
    scale = 0.78 * size / max(hi[0] - lo[0], hi[1] - lo[1], 1e-9)
    albedo = np.tile(SKIN, (len(rest), 1))
    for s in range(0, len(motion), 16):
        for v in flame.motion_vertices(motion[s:s + 16], beta):
            yield draw_mesh(v, flame.faces, albedo, size, (lo + hi) / 2, scale, background, ssaa)


TITLE_H, SUB_H = 32, 48


def _check_words(words, name: str = "words") -> list[Word]:
    if isinstance(words, (str, bytes)) or not isinstance(words, (list, tuple)):
        raise UserError(f"{name}: expected a list of Word(text, start, end), got {type(words).__name__} {words!r:.60}")
    return [check_word(name, i, w, math.inf) for i, w in enumerate(words)]


def render_frames(speaker_motion, listener_motions: dict, words=(), fps: float = 30.0, flame=None,
                  beta=None, speaker_beta=None, size: int = 256, ssaa: int = 2) -> Iterator[np.ndarray]:
    """Frames ``(size + 80, size * (1 + listeners), 3)`` uint8: speaker | each listener ``(T, 56)`` (dict order),
    titles on top, the speaker's ``words`` (seconds from frame 0) below; FLAME heads with a ``flame`` model (shapes
    ``beta``/``speaker_beta (100,)``), else schematic; ``size`` a multiple of 16; ``ssaa`` supersampling per side."""
    from PIL import Image, ImageDraw
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.number)) or not (math.isfinite(fps) and fps > 0):
        raise UserError(f"fps: expected a positive number, got {fps!r}")
    spk = _check_array("speaker_motion", speaker_motion, (None, D_MOTION))
    if not isinstance(listener_motions, dict) or not listener_motions or not len(spk):
        raise UserError(f"listener_motions: expected a non-empty dict name -> (T, 56) array and >= 1 speaker frame, "
                        f"got {type(listener_motions).__name__} {listener_motions!r:.60}, {len(spk)} frames")
    lis = {str(n): _check_array(f"listener_motions[{n!r}]", m, (len(spk), D_MOTION))
           for n, m in listener_motions.items()}
    beta, sbeta = (None if b is None else _check_array(n, b, (N_SHAPE,)) for n, b in (("beta", beta),
                                                                                     ("speaker_beta", speaker_beta)))
    words = _check_words(words)
    if not isinstance(size, (int, np.integer)) or size < 64 or size % 16:
        raise UserError(f"size: expected a multiple of 16 >= 64 (pixels per panel), got {size!r}")
    if ssaa not in (1, 2, 3, 4):
        raise UserError(f"ssaa: expected 1, 2, 3 or 4 (supersampling per side), got {ssaa!r}")
    names = ["speaker"] + list(lis)
    labels = [n if text_width(n) <= size - 8 else n[:max(1, (size - 8) // 12)] + "..." for n in names]
    streams = [_panels(spk, "speaker", sbeta, flame, size, ssaa)]
    streams += [_panels(m, "listener", beta, flame, size, ssaa) for m in lis.values()]
    W = size * len(names)
    canvas = np.empty((TITLE_H + size + SUB_H, W, 3), np.float32)
    for t in frame_times(len(spk), float(fps)):
        canvas[:] = (0.08, 0.08, 0.09)
        for k, st in enumerate(streams):
            canvas[TITLE_H:TITLE_H + size, k * size:(k + 1) * size] = next(st)
        im = Image.fromarray((np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for k, label in enumerate(labels):
            x = k * size + (size - text_width(label)) // 2
            draw_text(draw, label, x, (TITLE_H - FONT_HEIGHT) // 2 + 2, (217, 217, 224))
        shown, active = subtitle_at(words, t, 1.5, W - 24)
        x = (W - text_width(" ".join(w.text for w in shown))) // 2
        for j, w in enumerate(shown):
            col = (255, 217, 64) if j == active else (235, 235, 235)
            x = draw_text(draw, w.text + (" " if j + 1 < len(shown) else ""), x, TITLE_H + size + 11, col)
        yield np.asarray(im)


def no_ffmpeg() -> str | None:
    """Why no mp4 can be written here, or None when imageio-ffmpeg is installed."""
    return None if importlib.util.find_spec("imageio_ffmpeg") else (
        "render: writing mp4 needs imageio-ffmpeg (it ships its own ffmpeg): pip install 'minilisten[video]' "
        "(or pip install imageio-ffmpeg)")


def render_clip(speaker_motion, listener_motions: dict, words, fps: float, out_path, flame=None, beta=None,
                speaker_beta=None, size: int = 256, progress: bool = True, still: int | None = None,
                ssaa: int = 2) -> Path:
    """H.264 mp4 (yuv420p) of :func:`render_frames` at ``out_path`` (and frame ``still`` as ``<out_path>.png``),
    written to a temporary name and renamed at the end, so a failed run leaves no partial file."""
    from PIL import Image
    from tqdm import tqdm
    if why := no_ffmpeg():
        raise ImportError(why)
    import imageio_ffmpeg
    frames = render_frames(speaker_motion, listener_motions, words, fps, flame, beta, speaker_beta, size, ssaa)
    T = len(speaker_motion)
    if still is not None and not (isinstance(still, (int, np.integer)) and 0 <= still < T):
        raise UserError(f"still: expected a frame index in [0, {T}), got {still!r}")
    first = next(frames)   # the inputs are checked
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}{out.suffix}")
    writer = imageio_ffmpeg.write_frames(str(tmp), first.shape[1::-1], fps=fps, quality=7, macro_block_size=16,
                                         ffmpeg_log_level="error")
    try:
        writer.send(None)
        for i, fr in enumerate(tqdm(itertools.chain([first], frames), total=T, desc="render", unit="frame",
                                    disable=not progress)):
            if i == still:
                Image.fromarray(fr).save(out.with_suffix(".png"))
            writer.send(fr)
        writer.close()
        os.replace(tmp, out)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return out


def render_segment(seg: Segment, preds: dict, out_path, flame=None, **kw) -> Path:
    """Speaker | ``preds`` (name -> ``(T, 56)``) | the segment's ground truth, with its words, fps and betas."""
    lis = {**preds, "ground truth": seg.listener_motion}
    return render_clip(seg.speaker_motion, lis, seg.words, seg.fps, out_path, flame, seg.listener_beta,
                       seg.speaker_beta, **kw)


def _load_motion(spec: str, what: str) -> np.ndarray:
    """``FILE.npy`` or ``FILE.npz:KEY`` -> array (read without unpickling code)."""
    from .safe_pickle import load_npy, load_npz
    path, _, key = spec.partition(":") if (":" in spec and not os.path.exists(spec)) else (spec, "", "")
    if not Path(path).is_file():
        raise UserError(f"{what} {spec}: expected a .npy file or FILE.npz:KEY, got no such file {path}")
    if Path(path).suffix != ".npz":
        return load_npy(path)
    d = load_npz(path)
    key = next(iter(d)) if not key and len(d) == 1 else key
    if key not in d:
        raise UserError(f"{what} {spec}: expected FILE.npz:KEY with KEY one of {sorted(d)}, got {key!r}")
    return d[key]


def load_words(path: str | os.PathLike) -> list[Word]:
    """Words from JSON: ``[{"text", "start", "end"}, ...]``, ``[[text, start, end], ...]`` or a Whisper
    transcript with word timestamps (``{"segments": [{"words": [...]}]}``)."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--words {path}: expected a JSON file of words, got {type(e).__name__}: {e}") from None
    if isinstance(d, dict) or (isinstance(d, list) and d and isinstance(d[0], dict) and "words" in d[0]):
        from .speaker import read_whisper_words
        return read_whisper_words(d)
    return _check_words(d, f"--words {path}")


def _from_models(a) -> tuple[Segment, dict]:
    from .data.cli import load_data
    from .data.windows import test_clips
    from .generate import generate_motion
    from .lm import ListenerLM
    from .vqvae import VQVAE
    if len(a.vq) != len(a.lm) or len(a.name) > len(a.vq):
        raise UserError(f"--vq/--lm/--name: expected one --lm and at most one --name per --vq, got --vq {a.vq} "
                        f"--lm {a.lm} --name {a.name}")
    ds, what = load_data(a)
    clips = test_clips(getattr(ds, a.split))
    if not 0 <= a.clip < len(clips):
        raise UserError(f"--clip: expected an index in [0, {len(clips)}) (clips of >= 16 frames of split {a.split} "
                        f"of {what}), got {a.clip}")
    clip = clips[a.clip]
    preds = {}
    names = a.name + ["generated" if i == 0 else f"method {i + 1}" for i in range(len(a.name), len(a.vq))]
    for vq_dir, lm_dir, name in zip(a.vq, a.lm, names):
        vq, lm = VQVAE.from_pretrained(vq_dir).eval(), ListenerLM.from_pretrained(lm_dir).eval()
        if vq.needs_beta and clip.listener_beta is None:
            raise UserError(f"--vq {vq_dir}: this VQ-VAE decodes with the listener's beta (100,), {what} has none")
        preds[name] = generate_motion(lm, vq, [clip])[1][0]
    print(f"{what}: clip {a.clip} of {len(clips)} ({a.split}), {clip.T} frames at {clip.fps:g} fps, "
          f"{len(clip.words)} words")
    return clip, preds


def main(argv: list[str] | None = None) -> int:
    from .data.cli import add_data_args
    p = ArgumentParser(
        prog="python -m minilisten render", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Side-by-side mp4 of speaker | listener(s) | ground truth with the speaker's words "
                    "(schematic heads, or the FLAME mesh with --flame).",
        epilog="arrays are (T, 56) = FLAME expression 50 | global rotation 3 | jaw 3; FILE.npy or FILE.npz:KEY; "
               "examples: docs/video.md")
    p.add_argument("--out", required=True, help="output .mp4 (also FILE.png with --still)")
    p.add_argument("--flame", metavar="PKL", help="FLAME 2020 generic_model.pkl (user-supplied): draw the mesh")
    p.add_argument("--size", type=int, default=256, help="pixels per panel, a multiple of 16 (default: %(default)s)")
    p.add_argument("--ssaa", type=int, default=2, help="supersampling per side, 1-4 (default: %(default)s)")
    p.add_argument("--still", type=int, metavar="FRAME", help="also write this frame as a PNG next to the mp4")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("saved arrays")
    g.add_argument("--speaker", metavar="FILE", help="speaker motion (T, 56)")
    g.add_argument("--listener", metavar="[NAME=]FILE", action="append", default=[],
                   help="a listener motion (T, 56); repeat for several methods (default name: generated)")
    g.add_argument("--gt", metavar="FILE", help="ground-truth listener motion (T, 56)")
    g.add_argument("--words", metavar="JSON", help="speaker words with times in seconds from frame 0")
    g.add_argument("--fps", type=float, default=30.0, help="frames per second of the arrays (default: %(default)s)")
    g.add_argument("--beta", metavar="FILE", help="listener FLAME shape (100,) (--flame only)")
    g.add_argument("--speaker-beta", metavar="FILE", help="speaker FLAME shape (100,) (--flame only)")
    m = p.add_argument_group("trained models (instead of --speaker); repeat --vq/--lm/--name to compare methods")
    m.add_argument("--vq", metavar="DIR", action="append", default=[], help="VQ-VAE checkpoint directory")
    m.add_argument("--lm", metavar="DIR", action="append", default=[], help="ListenerLM checkpoint directory")
    m.add_argument("--name", action="append", default=[], help="label of a method (default: generated, method 2...)")
    m.add_argument("--split", choices=("train", "val", "test"), default="test")
    m.add_argument("--clip", type=int, default=0, help="index of the evaluation clip (default: %(default)s)")
    add_data_args(p)
    a = p.parse_args(argv)
    from .flame import load_flame
    flame = load_flame(a.flame) if a.flame else None
    if why := no_ffmpeg():
        raise UserError(why)
    kw = dict(size=a.size, progress=not a.no_progress, still=a.still, ssaa=a.ssaa)
    if a.vq or a.lm:
        if a.speaker or a.listener or a.gt:
            raise UserError("--vq/--lm: expected either trained models or saved arrays (--speaker/--listener/--gt), "
                            "got both")
        out = render_segment(*_from_models(a), a.out, flame, **kw)
    else:
        if not a.speaker:
            raise UserError("--speaker: expected a speaker motion file (T, 56) (or --vq/--lm to generate), got none")
        lis = {}
        for spec in a.listener:
            name, eq, path = spec.partition("=")
            name, path = (name, path) if eq else ("generated" if not lis else f"listener {len(lis) + 1}", spec)
            lis[name] = _load_motion(path, "--listener")
        if a.gt:
            lis["ground truth"] = _load_motion(a.gt, "--gt")
        if not lis:
            raise UserError("--listener/--gt: expected at least one listener motion to draw, got none")
        words = load_words(a.words) if a.words else []
        beta, sbeta = (_load_motion(f, n) if f else None for f, n in ((a.beta, "--beta"),
                                                                     (a.speaker_beta, "--speaker-beta")))
        out = render_clip(_load_motion(a.speaker, "--speaker"), lis, words, a.fps, a.out, flame, beta, sbeta, **kw)
    print(f"wrote {out}" + (f" and {out.with_suffix('.png')}" if a.still is not None else ""))
    return 0
