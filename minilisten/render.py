"""Video of a conversation: speaker | generated listener(s) | ground-truth listener, with subtitles.

``python -m minilisten render`` and :func:`render_clip` draw each head from its motion ``(T, 56)``
(expression ``[0:50]``, pose ``[50:56]`` = global rotation 3 | jaw 3, axis-angle) at the data's
fps and write an H.264 mp4 through ``imageio-ffmpeg`` (it ships its own ffmpeg binary; ``pip install
'minilisten[video]'``). Two kinds of head, both rasterised here in numpy (z-buffer, Gouraud-shaded
Lambert lighting, 2x supersampling; no OpenGL, pyrender or pytorch3d):

- with a user-supplied FLAME model (``--flame generic_model.pkl``, :mod:`minilisten.flame`): the
  FLAME mesh from beta, expression and pose;
- without one, :class:`SchematicHead`: a low-poly head built from the same numbers. The head turns
  by the 3 global rotation angles (the same axis-angle convention as FLAME, about the top of a
  fixed neck), the chin and lower lip drop with the jaw rotation, and four leading expression
  coefficients move the face: ``exp[0]`` mouth corners (smile), ``exp[1]`` brows up/down,
  ``exp[2]`` inner brows down (frown), ``exp[3]`` mouth width. It is a readable schematic of
  pose, jaw and a few expression dimensions, not a face model: the other 46 expression
  coefficients and the shape beta are not shown, and ``exp[0..3]`` do not mean what FLAME's
  components mean (they are PCA directions that mix many facial regions).

The speaker's words run in a subtitle band as they are spoken: :func:`subtitle_at` (the word
being spoken is highlighted; a word stays ``hold`` seconds after its end). The frame at index
``i`` shows time ``(i + 0.5) / fps`` (the middle of the frame).

Text uses a built-in bitmap of the Aileron Regular font (CC0, the font Pillow ships as its
default), printable ASCII only (other characters are drawn as ``?``).
"""
from __future__ import annotations

import argparse
import base64
import json
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .cli_config import ArgumentParser
from .data.segment import D_MOTION, EXP, N_SHAPE, POSE, Segment, Word, _check_array

_FONT_CELL, _FONT_H, _FONT_ASCENT = 25, 25, 20
_FONT_ADVANCE = [4, 5, 7, 11, 12, 15, 13, 4, 6, 6, 11, 12, 4, 6, 5, 6, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 5, 5, 12, 12, 11, 11, 17, 13, 13, 14, 14, 12, 12, 14, 15, 5, 11, 12, 12, 17, 14, 15, 12, 15, 12, 12, 13, 13, 12, 19, 13, 12, 12, 6, 6, 6, 12, 10, 6, 11, 12, 11, 13, 11, 7, 13, 11, 4, 4, 10, 5, 17, 11, 12, 12, 13, 6, 9, 7, 12, 10, 16, 10, 10, 10, 6, 5, 6, 12]
_FONT_BLOB = (
    "eNrtWk+IHFkZf1Vlpk0q0+Vhg7tMpueSQ4TpmRwmS2sqmRLBICjJYTsBg5lF9iCokxw6OMKMqTWHBQ8yCIlHBy9ehDTYSGeJmVpz"
    "EHZBSyTuYVm31iQrgrup1QlOr5Np6/2+1/W+ruru6YlZJdLvUN1Vr96f7//v+14JMWqjNmqjNmqjNmqjNmpPto33ee7humfEoMdq"
    "3jy7efS4sxz43xOywpRkpd9LsctJL+S66WcO18JQy86NVCjTQpjiRbo5Ovhdt+susPQkTs/H3YLq0fEEWzAGJaE1Ppvvpg6XNvpl"
    "U163p+T1lphMrquXGYGYyjeHWncfri1a/YS8rl7Ao208Esfxv23IGdfl/602bLhly+u9iSGWoHGdG1CwtW5gEjk8aGOSdtvC7I7u"
    "sIS8cRgHYhEZKTPmIbctEo+aahYUYPatNnFJXuN2m6ZKrp4tGsn/sjghpkWEySID1kkvkY0d7hcG1viN08ugZVvKqw/Jw2aaGO/e"
    "f5rDv3uEVJtu9vdRavE78NL7Ot59vphco1ex1ZUDmsCAT7WTIkOy0TUQuonxi/CQG/fh4wL5yD+L2b/VktfqVflu+GOpzv65mSHW"
    "uNnCImuQc4xpFx7K/9EZqQBxVU4SnK2io4qOa+iAtDuGHJMkSlpEU2Iz6VuHeKIzM5gKNrF4X7Jk4b4FOuT/Fx5WoYlqQsk4259K"
    "1KgB2ceY0qvi3XGmSl7ei1wUfb2P21vVXKaJys6dHh5umLYbHXyWxaAemkiLB//Az4sH8egrUrSuK8f4BUbgoRzlOwW9MsYHb1iw"
    "pTJoDrEJKbOUGQ38RrBBTy7egGx2clEFjPMuQF5vm9goWDMD/XBFORsHSmIGHTFjIjjgSBfVsXBb/CsZcQziKWESmioy5N4DCxQU"
    "QyMdTYoTGQG663YyWU3RUUrXUEpU4GZZH07ATm9Vc/pFHGfXGrUbHdzLLOPFfLfDYdSz2NCpK5JXjlNISYtZ0Ou4bTHYYe0jmYP5"
    "FzG+hrUCEzf+P+V1WlDHM6R+2A+Y4kAe5OEh695sdykOSPv07+pHyaIUikqZOBCaHnW4jInYlTWjmXHTCpOQHJflTpKpSuiwsUG5"
    "lxh6kCiO5p+LyRoJJXK7b5sVISrodikkwa5C7ksUyvxcjqgIiMPdNjRmuPeWlWKGLdpi6z25hbsTWbcUw2KUXv1kqpUs5t5iOODu"
    "FMEPOWYZRuvdgia2hWZ+Eebsek5iM5HhYkLQsQX8IEzmZD/ZT6mViBDu/TdB+Zt/JpboF3yDqaiwBuJvFfSUEYLcvWoqKE7N1bH/"
    "h+t6K77V0BTMkoDzUF/lBlA77wuXf5AsVq/RQnaqY4GFfs7wTkceRoWmZsY7xlzS5xZjjJCTUFTzC8BJLgwhNhj/AKNEBZJoJLqd"
    "DClDXmUyiobef8hhVPCZHOPOw6ldh9uNrhWAALY1ZlhRYEJCzvirU1m35EamdssLD95L7q4DB4RnpzAChrPYkmMIcTaBOMJPi9TD"
    "ewUwvxQVEsOIYQyRAe5WWznsYw12ryHcT3gM4+YnwZI4i8iUcgaD6wxzQttuh1yKbSHG2/AMQOHBN28oVyV7vwjKoYke+cTnaMZV"
    "vAv07ivYDu91sdn6UfIzCX/n3DO03+VoyeEOuQeMKjOk+wvxetJ3ynYxQr4XY+8xKSb5zw1DjyaFE5OQxHS9JuPhB+g/b2vUPM4w"
    "g2LiXI59oQHG2CANXjJZ+gTcq6spKCMNuYmNdEV1p8z8lTEby6kaZMYYAYcbmptYg0Y0BAtFcEhmDdb6NzN5o9EQDIQ4OkbNiT5Z"
    "Wlf8PAQRhnAZHvnrR22thfuZcnpHPtEHYPJMj2y3S6o+EroIjzauyUexuaS7QyR/S2BidzIC2z1dRQa+SM9gcF+yl49I31aEwjGr"
    "VWgJWVrQvpzr4Bx4x2SSqAQfJu9esRyMiBEBpqgbj8DkjQmRgVHChk0UD05XUv/6QANExarD3MILY1kyD6nMs4FYuWoAyTlgSSml"
    "wC/gdwpXHtWDP5jMXwVwMghbfoH8tQITLtPEZzTlLkZGUJ/A+pn020tFFryh5iq1JFvwKaGbPdIH3L0Ou/IoplYwx5kF3c3j3MYH"
    "Zuoy+gY9Zbtq84SHqJBQisnU7BT1CgK6i3CsK2t2dsbv8pumQahI0vTu56cSVa/DO1N2F3dIk3xaRo4XQxNj8chBLj+fhVFtHjkm"
    "51wZB39tpW6pvW5of9XG3lbnszCKlNo/WbCLKpUVPmALqjDd4U5FwLxBnv5IT9iRuUKWHNbGOgvpglFlbsCxVA3SklhQ0kBT4RGN"
    "CCe4C0d3DToT/b4iDWQLnC7VNF5Z5TDqG5RtruztDaMU8AqbGPLKLBy5fqErzkEXxOlLun4ezOeCnrJdtXnKerAt5cJJ352OWKB1"
    "cACtt7LeNOh6EOlpj7ihZUlfaqbK6XZIczIMd8UdC+WEHIz6JZeEvU/CqCjWbumsIVJ/tXzV1g6Sw6jwNbmF8F3/trRtW3fT3uc4"
    "BCQmHg5yScetEyIjc6U+7bbB6HB1jOJRfavAq5yu9CCOcmQx00SlVyItN6p9kopOY6e1ymSxo0TCLmo6esCo/ZtGbxh16WukDdj2"
    "WrOcrtEFo0i0NSsLo07vyQW9ikrmsHlgRrEHN6qY2SHQTMsUhHrFpxq5FGhMaJ/ozejK/v5ic00Wtu6LNCUroSoRC0r1GcNLiq8a"
    "RqnM020ySVy5/ZqURMPFCDlJ6mPLqSGrKTmMotygPh1ekvbIZHuYWyKzcK+wliOTYBSXuVKf6gEOBx2hvQ8zhgcFnvY5EXNk00wT"
    "Y+ZLVrIwShQhvGn7DROlObnp22YatZQazHEn0y8ZVwXzyXFse7LopGvwwpZiwivmIBilbK/kMUudYQigeqeAeD4Nf9PQlRlSiQrF"
    "ia7a0wSDUTdYx5WTs+OdxJ2UM1mU2LeUYXjScTwDoxSBzhKTRHhUAlqrQlXwpbSjAa0PLBm9FR1dMKoCQ64U6slvnXUr9bGYbfet"
    "ubgcRlmrIoVRFaTYXTDK6QGjLA6jrEqHwL4wyjMYlHdRWvF+A+H99uXvpDSFR9nZ3A7VqOc49v0prqeA7oLv37bk4k7W75Berfp9"
    "OPMSr6dSxkKbJxcVqmJmrMufqghYYvWrErzWS10TL+q/90y9lP/y5XWMnmaAFvMS+zjDE0lkq1FUTw2sZSaJ+j4Jo8T7lpaEKj1Q"
    "wldDwtrQjqpJ1oISq3hf/NyU5U8NkWucVRcHn3k6G4KlZC4x0UrhR6eqttkHRiGP7gGjQrjiTgbp65BapzRUuXCsFDwP2R0Lk9He"
    "SXTX9+lUnUpIHi95d/kSDoBXoSz+A/jBSvRqcv3VHSt78lMYXICYZcrXOUrB5r+tTkEYBxbha5r3dQYRnAOMuHBcT7WsJq7oNWy2"
    "VNjxQUVAHNTTzq3g8OWGPnxx1X7+ZGXw1UqLKFjRxzXOpow8rtjGiBtaRM2rpKLSf0Y4K1I9TRSPxGX1fcH3ZJYRGWn3eThWpUSH"
    "B9Zc/HOI6utUjfojVaM+0tUooiO6dqI3jFLVKCMHoyKqRpE8Fv+qQyoxnwKAt4CVIoor9obZyXcEwaTz1SEO9brK0VQw9wBxvQIm"
    "brGj2L6HepNdByMs6HlUrVXZVJsdFhM9qiI8oQ9Afaq6bWtg5dn9z2BUEN4jzYcOZK9jCI6i4/aYBrSO2s+H2WoUHUu7iIaxqjAc"
    "l30OPj1RUynXiNIExeXVdWZMm7P6pDqwZaGhTD2EsuikepzlNX1rLv4FJO5/AUtC8Mpbhxo9GtOKE872gVEONGrTyMEoOuFeJnk8"
    "+rseQcyn7xm8WxTDqYZqLiNYWOmhvsKwB3kQGu4Th372s8aCnhADP6l4gq3vEUyK2B8a/62vUbyx/2DsE/k2SgWLHMuHO+d1HuMM"
    "jwcFjeR3+jaquxmDvmHooZW1j1WKO1Eftm3xNDSPZ8IHcidfu2mh2Xysc95UD3e9IFcJXtg2xNPXvB315Wn/oPSF6m7l0sGiDAEP"
    "ZVXxYwYVL/9hUShG7f+ora5nnzR25e53+zlenD+7G32fO2ofd/s3NhLzGg==")


# ----------------------------------------------------------------------------- text
def _font() -> tuple[np.ndarray, np.ndarray]:
    """Glyph cells ``(95, H, CELL)`` float in [0, 1] for chars 32..126, and their advances ``(95,)``."""
    global _FONT_CACHE
    if _FONT_CACHE is None:
        packed = np.frombuffer(zlib.decompress(base64.b64decode("".join(_FONT_BLOB))), np.uint8)
        q = np.stack([(packed >> s) & 3 for s in (0, 2, 4, 6)], 1).reshape(-1)
        n = len(_FONT_ADVANCE)
        img = q[:_FONT_H * _FONT_CELL * n].reshape(_FONT_H, n, _FONT_CELL).transpose(1, 0, 2) / 3.0
        _FONT_CACHE = (img.astype(np.float32), np.asarray(_FONT_ADVANCE))
    return _FONT_CACHE


_FONT_CACHE = None
FONT_HEIGHT = _FONT_H


def _codes(text: str) -> np.ndarray:
    return np.array([ord(c) - 32 if 32 <= ord(c) < 127 else ord("?") - 32 for c in text], np.int64)


def text_width(text: str) -> int:
    """Width in pixels of ``text`` in the built-in font."""
    return int(_font()[1][_codes(text)].sum()) if text else 0


def draw_text(img: np.ndarray, text: str, x: int, y: int, color=(1.0, 1.0, 1.0)) -> int:
    """Blend ``text`` into the float image ``img (H, W, 3)`` with its top-left at ``(x, y)``;
    returns the x after the text. Clipped at the image borders."""
    glyphs, adv = _font()
    H, W = img.shape[:2]
    col = np.asarray(color, np.float32)
    pad = 3   # the glyph's origin inside its cell (room for negative side bearings)
    for c in _codes(text):
        x0, y0 = x - pad, y
        a0, b0 = max(0, -y0), max(0, -x0)
        a1, b1 = min(_FONT_H, H - y0), min(_FONT_CELL, W - x0)
        if a1 > a0 and b1 > b0:
            alpha = glyphs[c, a0:a1, b0:b1, None]
            region = img[y0 + a0:y0 + a1, x0 + b0:x0 + b1]
            region *= 1 - alpha
            region += alpha * col
        x += int(adv[c])
    return x


# ----------------------------------------------------------------------------- subtitles
def frame_times(n_frames: int, fps: float) -> np.ndarray:
    """Time in seconds each frame shows: the middle of the frame, ``(i + 0.5) / fps``."""
    return (np.arange(n_frames) + 0.5) / fps


def subtitle_at(words: list[Word], t: float, hold: float = 1.5, max_width: int | None = None) -> tuple[list[Word], int | None]:
    """The words shown at time ``t``: those that started at or before ``t`` and ended less than
    ``hold`` seconds before it, the latest ones that fit in ``max_width`` pixels (joined by spaces).
    Returns ``(shown, i)``, ``i`` the index in ``shown`` of the word being spoken
    (``start <= t < end``), or None in a pause."""
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


# ----------------------------------------------------------------------------- rasteriser
def rasterize(verts: np.ndarray, faces: np.ndarray, colors: np.ndarray, height: int, width: int,
              background=(0.0, 0.0, 0.0), cull: bool = True) -> np.ndarray:
    """Z-buffered triangles: ``verts (V, 3)`` in pixels (x right, y down, z = depth, larger is
    nearer), ``faces (F, 3)``, per-vertex ``colors (V, 3)`` interpolated with barycentrics.
    Returns an image ``(height, width, 3)`` float32. A pixel is covered when its centre is inside
    a triangle (edges included); ``cull`` skips triangles facing away: those wound clockwise as
    seen by the camera (a positive signed area in the y-down pixel coordinates)."""
    img = np.empty((height, width, 3), np.float32)
    img[:] = np.asarray(background, np.float32)
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
    if not len(fid):
        return img
    # barycentric coordinates and depth are affine in the pixel position: l_k = ex x + ey y + e0
    ar = area[fid]
    p = [(1, 2), (2, 0), (0, 1)]
    ex = np.stack([(y[fid, i] - y[fid, j]) / ar for i, j in p], 1)
    ey = np.stack([(x[fid, j] - x[fid, i]) / ar for i, j in p], 1)
    e0 = np.stack([(x[fid, i] * y[fid, j] - y[fid, i] * x[fid, j]) / ar for i, j in p], 1)
    zf = z[fid]
    zx, zy, z0 = (ex * zf).sum(1), (ey * zf).sum(1), (e0 * zf).sum(1)
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
    kk = np.repeat(k, cnt)
    pix = np.repeat(row * width + px0, cnt) + np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    k = kk
    cx, cy = pix % width + 0.5, pix // width + 0.5
    depth = zx[k] * cx + zy[k] * cy + z0[k]
    zbuf = np.full(height * width, -np.inf)
    np.maximum.at(zbuf, pix, depth)
    win = depth >= zbuf[pix]
    k, pix, cx, cy = k[win], pix[win], cx[win], cy[win]
    lam = ex[k] * cx[:, None] + ey[k] * cy[:, None] + e0[k]              # (N, 3)
    col = np.einsum("nk,nkc->nc", lam, colors[faces[fid[k]]])
    img.reshape(-1, 3)[pix] = col
    return img


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals ``(V, 3)`` (faces wound counter-clockwise seen from outside)."""
    tri = verts[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    vn = np.zeros_like(verts)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


LIGHT = np.array([-0.35, 0.45, 1.0]) / np.linalg.norm([-0.35, 0.45, 1.0])


def shade(verts: np.ndarray, faces: np.ndarray, albedo: np.ndarray, ambient: float = 0.28) -> np.ndarray:
    """Lambert shading per vertex: ``albedo (V, 3) * (ambient + (1 - ambient) max(0, n . light))``,
    light from the upper left, in front (world frame: x right on screen, y up, z to the camera)."""
    ndl = np.clip(vertex_normals(verts, faces) @ LIGHT, 0.0, 1.0)
    return albedo * (ambient + (1 - ambient) * ndl)[:, None]


def draw_mesh(verts: np.ndarray, faces: np.ndarray, albedo: np.ndarray, size: int, center, scale: float,
              background, ssaa: int = 2) -> np.ndarray:
    """Orthographic view of a world-space mesh (camera on +z looking at ``center``; ``scale``
    pixels per world unit) -> float image ``(size, size, 3)``; ``ssaa``: supersampling factor."""
    cols = shade(verts, faces, albedo)
    S = size * ssaa
    s = scale * ssaa
    p = np.empty_like(verts)
    p[:, 0] = S / 2 + s * (verts[:, 0] - center[0])
    p[:, 1] = S / 2 - s * (verts[:, 1] - center[1])
    p[:, 2] = verts[:, 2]
    img = rasterize(p, faces, cols, S, S, background)
    if ssaa > 1:
        img = img.reshape(size, ssaa, size, ssaa, 3).mean((1, 3))
    return img


# ----------------------------------------------------------------------------- meshes
def _ellipsoid(n_lat: int, n_lon: int, radii, center) -> tuple[np.ndarray, np.ndarray]:
    """UV ellipsoid: vertices ``((n_lat + 1) n_lon, 3)``, faces outward-wound; longitude 0 faces +z."""
    th = np.linspace(0, np.pi, n_lat + 1)[:, None]
    ph = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)[None]
    unit = np.stack([np.sin(th) * np.sin(ph), np.cos(th) + 0 * ph, np.sin(th) * np.cos(ph)], -1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(n_lat), np.arange(n_lon), indexing="ij")
    i, j = i.ravel(), j.ravel()
    a, b = i * n_lon + j, (i + 1) * n_lon + j
    c, d = (i + 1) * n_lon + (j + 1) % n_lon, i * n_lon + (j + 1) % n_lon
    faces = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    faces = _outward(unit, faces)
    return unit * np.asarray(radii) + np.asarray(center), faces


def _outward(unit_verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flip every face whose normal points towards the origin (a star-shaped closed surface)."""
    tri = unit_verts[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = (n * tri.mean(1)).sum(1) < 0
    faces = faces.copy()
    faces[flip] = faces[flip][:, ::-1]
    return faces


def _strip_faces(n: int, offset: int) -> np.ndarray:
    """Faces of a strip between two polylines of ``n`` points (top ``0..n-1``, bottom ``n..2n-1``),
    counter-clockwise seen from +z when the top line is above the bottom one and runs in +x."""
    k = np.arange(n - 1)
    t0, t1, b0, b1 = k, k + 1, k + n, k + n + 1
    return np.concatenate([np.stack([t0, b0, b1], 1), np.stack([t0, b1, t1], 1)]) + offset


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
    """A low-poly head, neck and shoulders drawn from a motion frame (no FLAME model needed).

    ``frame_mesh(frame56)`` -> ``(verts (V, 3), faces (F, 3), albedo (V, 3))`` in world units
    (head radius ~1, y up, z to the camera). What moves: module doc of :mod:`minilisten.render`.
    ``exaggerate`` scales the expression effects (not the pose)."""

    N_MOUTH = 13

    def __init__(self, shirt=(0.30, 0.42, 0.62), exaggerate: float = 1.0):
        self.exaggerate = float(exaggerate)
        parts = []   # (verts, faces, color) of the parts that turn with the head
        v, f = _ellipsoid(18, 28, HEAD_R, (0, 0, 0))
        self._head = slice(0, len(v))
        parts.append((v, f, SKIN))
        # jaw skinning weight of each head vertex: below the mouth line and in front of the hinge
        self._jaw_w = _smoothstep(-v[:, 1], 0.12, 0.42) * _smoothstep(v[:, 2], -0.35, 0.25)
        # ears
        for sx in (-1, 1):
            ve, fe = _ellipsoid(6, 10, (0.07, 0.17, 0.11), (sx * 0.72, 0.02, -0.08))
            parts.append((ve, fe, (0.80, 0.62, 0.52)))
        # nose: a cone from the face to its tip
        n_seg = 10
        ang = np.linspace(0, 2 * np.pi, n_seg, endpoint=False)
        base = np.stack([0.09 * np.cos(ang), 0.02 + 0.11 * np.sin(ang), np.zeros(n_seg)], 1)
        base[:, 2] = _surface_z(base[:, 0], base[:, 1], -0.03)
        tip = np.array([[0.0, -0.1, _surface_z(0.0, -0.1) + 0.17]])
        vn = np.concatenate([base, tip])
        fn = np.stack([np.arange(n_seg), (np.arange(n_seg) + 1) % n_seg, np.full(n_seg, n_seg)], 1)
        c = vn[:n_seg].mean(0)
        fn = _outward(vn - c, fn)
        parts.append((vn, fn, (0.82, 0.64, 0.54)))
        # eyes: white ball + dark pupil
        for sx in (-1, 1):
            x, y = sx * 0.27, 0.2
            ve, fe = _ellipsoid(8, 12, (0.105, 0.07, 0.05), (x, y, _surface_z(x, y, -0.015)))
            parts.append((ve, fe, (0.95, 0.95, 0.93)))
            ve, fe = _ellipsoid(6, 10, (0.045, 0.045, 0.03), (x, y, _surface_z(x, y, 0.025)))
            parts.append((ve, fe, (0.12, 0.10, 0.10)))
        n_static = sum(len(p[0]) for p in parts)
        # dynamic parts (vertices rebuilt per frame): two brows, lips, mouth interior
        n = self.N_MOUTH
        self._brow = [n_static + k * 2 * 6 for k in range(2)]
        self._lips = n_static + 24
        self._mouth = self._lips + 2 * n
        dyn_faces = [_strip_faces(6, self._brow[0]), _strip_faces(6, self._brow[1]),
                     _strip_faces(n, self._lips), _strip_faces(n, self._mouth)]
        dyn_colors = [(0.30, 0.20, 0.15)] * 24 + [(0.72, 0.35, 0.35)] * (2 * n) + [(0.22, 0.05, 0.07)] * (2 * n)
        n_head = n_static + 24 + 4 * n
        # body (not moved by the head pose): neck + shoulders
        vnk, fnk = _ellipsoid(6, 20, (0.33, 0.55, 0.33), (0, -1.2, -0.12))
        vb, fb = _ellipsoid(10, 28, (1.35, 0.55, 0.62), (0, -2.05, -0.15))
        self.n_head = n_head
        verts = [p[0] for p in parts]
        faces, off = [], 0
        for p in parts:
            faces.append(p[1] + off)
            off += len(p[0])
        faces += dyn_faces
        off = n_head
        faces += [fnk + off, fb + off + len(vnk)]
        self._static = np.concatenate(verts)
        self._body = np.concatenate([vnk, vb])
        self.faces = np.concatenate(faces).astype(np.int64)
        albedo = [np.tile(p[2], (len(p[0]), 1)) for p in parts] + [np.asarray(dyn_colors)]
        albedo += [np.tile((0.80, 0.62, 0.52), (len(vnk), 1)), np.tile(shirt, (len(vb), 1))]
        self.albedo = np.concatenate(albedo).astype(np.float64)
        assert len(self.albedo) == n_head + len(self._body)
        assert self.faces.max() < len(self.albedo)

    def frame_mesh(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``frame (56,)`` -> ``(verts, faces, albedo)``."""
        from .flame import rodrigues
        frame = np.asarray(frame, np.float64)
        e = np.tanh(frame[EXP][:4]) * self.exaggerate
        smile, brow, frown, width = e
        pose = frame[POSE]
        Rj = rodrigues(pose[3:6])
        jaw = lambda p, w: p + w[:, None] * ((p - JAW_PIVOT) @ Rj.T + JAW_PIVOT - p)   # noqa: E731
        v = self._static.copy()
        v[self._head] = jaw(v[self._head], self._jaw_w)
        # brows: 6 points along each brow, two rows (thickness)
        brows = []
        for sx in (-1, 1):
            u = np.linspace(0, 1, 6)                 # inner -> outer
            x = sx * (0.10 + 0.30 * u)
            y = 0.37 + 0.05 * np.sin(np.pi * u) + 0.07 * brow - 0.06 * frown * (1 - u)
            top = np.stack([x, y + 0.025, _surface_z(x, y + 0.025, 0.02)], 1)
            bot = np.stack([x, y - 0.025, _surface_z(x, y - 0.025, 0.02)], 1)
            if sx < 0:   # keep the strip's top line running in +x
                top, bot = top[::-1], bot[::-1]
            brows.append(np.concatenate([top, bot]))
        # mouth: upper lip line, lower lip line dropped by the jaw; lips = a wider band behind
        n = self.N_MOUTH
        u = np.linspace(-1, 1, n)
        half = 0.25 * (1 + 0.25 * width + 0.12 * smile)
        x = half * u
        y_m = -0.45 + 0.09 * smile * u ** 2
        up = np.stack([x, y_m + 0.012, _surface_z(x, y_m + 0.012)], 1)
        lo = np.stack([x, y_m - 0.012, _surface_z(x, y_m - 0.012)], 1)
        lo = jaw(lo, 1 - u ** 2)   # the lower lip follows the chin (its corners stay)
        lip_up = up + np.array([0, 0.045, 0]) * (1 - u ** 2)[:, None] ** 0.5
        lip_lo = lo - np.array([0, 0.05, 0]) * (1 - u ** 2)[:, None] ** 0.5
        for pts, lift in ((up, 0.035), (lo, 0.035), (lip_up, 0.02), (lip_lo, 0.02)):
            pts[:, 2] = _surface_z(pts[:, 0], pts[:, 1], lift)
        head = np.concatenate([v] + brows + [lip_up, lip_lo, up, lo])
        Rg = rodrigues(pose[0:3])
        head = (head - HEAD_PIVOT) @ Rg.T + HEAD_PIVOT
        return np.concatenate([head, self._body]), self.faces, self.albedo

    #: camera of the schematic panels (world point at the panel centre, world units across a panel)
    CENTER = (0.0, -0.32)
    SPAN = 2.9


# ----------------------------------------------------------------------------- heads -> panels
class _Painter:
    """Draws panels ``(size, size, 3)`` float for motion frames (schematic or FLAME)."""

    def __init__(self, flame=None, size: int = 256, ssaa: int = 2, background=(0.16, 0.17, 0.19)):
        self.flame, self.size, self.ssaa, self.bg = flame, size, ssaa, background
        self._schematic: dict = {}
        self._cam: dict = {}

    def schematic(self, role: str) -> SchematicHead:
        if role not in self._schematic:
            shirt = (0.42, 0.42, 0.45) if role == "speaker" else (0.30, 0.42, 0.62)
            self._schematic[role] = SchematicHead(shirt=shirt)
        return self._schematic[role]

    def panels(self, motion: np.ndarray, role: str, beta=None) -> Iterator[np.ndarray]:
        """One panel per frame of ``motion (T, 56)``."""
        if self.flame is None:
            head = self.schematic(role)
            scale = self.size / head.SPAN
            for fr in motion:
                v, f, a = head.frame_mesh(fr)
                yield draw_mesh(v, f, a, self.size, head.CENTER, scale, self.bg, self.ssaa)
            return
        fm = self.flame
        rest = fm.vertices(np.zeros((1, 0)), np.zeros((1, 6)), beta)[0]
        lo, hi = rest.min(0), rest.max(0)
        center = (lo + hi) / 2
        scale = 0.78 * self.size / max(hi[0] - lo[0], hi[1] - lo[1], 1e-9)
        albedo = np.tile(SKIN, (len(rest), 1))
        for s in range(0, len(motion), 16):
            for v in fm.motion_vertices(motion[s:s + 16], beta):
                yield draw_mesh(v, fm.faces, albedo, self.size, center, scale, self.bg, self.ssaa)


# ----------------------------------------------------------------------------- frames
TITLE_H, SUB_H = 32, 48


def _check_words(words) -> list[Word]:
    if isinstance(words, (str, bytes)) or not isinstance(words, (list, tuple)):
        raise ValueError(f"words: expected a list of Word(text, start, end), got {type(words).__name__} {words!r:.60}")
    return [Segment._check_word("words", i, w, math.inf) for i, w in enumerate(words)]


def _check_inputs(speaker_motion, listener_motions, words, fps, beta, speaker_beta):
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) or not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps: expected a positive number, got {fps!r}")
    spk = _check_array("speaker_motion", speaker_motion, (None, D_MOTION))
    T = spk.shape[0]
    if T == 0:
        raise ValueError("speaker_motion: expected at least 1 frame, got 0")
    if not isinstance(listener_motions, dict) or not listener_motions:
        raise ValueError(f"listener_motions: expected a non-empty dict name -> (T, 56) array, got "
                         f"{type(listener_motions).__name__} {listener_motions!r:.60}")
    lis = {}
    for name, m in listener_motions.items():
        a = _check_array(f"listener_motions[{name!r}]", m, (None, D_MOTION))
        if a.shape[0] != T:
            raise ValueError(f"listener_motions[{name!r}]: expected {T} frames (as speaker_motion), got {a.shape[0]}")
        lis[str(name)] = a
    b = None if beta is None else _check_array("beta", beta, (N_SHAPE,))
    sb = None if speaker_beta is None else _check_array("speaker_beta", speaker_beta, (N_SHAPE,))
    return spk, lis, _check_words(words), float(fps), b, sb


def render_frames(speaker_motion, listener_motions: dict, words=(), fps: float = 30.0, flame=None,
                  beta=None, speaker_beta=None, size: int = 256, hold: float = 1.5,
                  speaker_label: str = "speaker", ssaa: int = 2) -> Iterator[np.ndarray]:
    """Frames ``(H, W, 3)`` uint8 of speaker | each listener (dict order), titles on top, the
    speaker's words below. ``speaker_motion``, each listener ``(T, 56)``; ``words``: Word or
    ``(text, start, end)`` in seconds from frame 0; ``flame``: a :class:`~minilisten.flame.FlameModel`
    or None (schematic heads); ``beta``/``speaker_beta (100,)``: FLAME shapes of the listener /
    speaker (FLAME only). ``H = size + 80``, ``W = size * (1 + len(listeners))``; size a multiple of 16;
    ``ssaa``: supersampling factor per side (1 = no antialiasing, 4x faster than 2)."""
    spk, lis, words, fps, beta, sbeta = _check_inputs(speaker_motion, listener_motions, words, fps, beta, speaker_beta)
    if not isinstance(size, (int, np.integer)) or size < 64 or size % 16:
        raise ValueError(f"size: expected a multiple of 16 >= 64 (pixels per panel), got {size!r}")
    T = spk.shape[0]
    if ssaa not in (1, 2, 3, 4):
        raise ValueError(f"ssaa: expected 1, 2, 3 or 4 (supersampling per side), got {ssaa!r}")
    painter = _Painter(flame, size, ssaa)
    names = [speaker_label] + list(lis)
    streams = [painter.panels(spk, "speaker", sbeta)] + [painter.panels(m, "listener", beta) for m in lis.values()]
    W, H = size * len(names), TITLE_H + size + SUB_H
    times = frame_times(T, fps)
    canvas = np.empty((H, W, 3), np.float32)
    for i in range(T):
        canvas[:] = (0.08, 0.08, 0.09)
        for k, (name, st) in enumerate(zip(names, streams)):
            canvas[TITLE_H:TITLE_H + size, k * size:(k + 1) * size] = next(st)
            label = name if text_width(name) <= size - 8 else name[:max(1, (size - 8) // 12)] + "..."
            draw_text(canvas, label, k * size + (size - text_width(label)) // 2, (TITLE_H - FONT_HEIGHT) // 2 + 2,
                      (0.85, 0.85, 0.88))
        shown, active = subtitle_at(words, times[i], hold, W - 24)
        x = (W - text_width(" ".join(w.text for w in shown))) // 2
        y = TITLE_H + size + (SUB_H - FONT_HEIGHT) // 2
        for j, w in enumerate(shown):
            col = (1.0, 0.85, 0.25) if j == active else (0.92, 0.92, 0.92)
            x = draw_text(canvas, w.text + (" " if j + 1 < len(shown) else ""), x, y, col)
        yield (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)


def _ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError:
        raise ImportError("render: writing mp4 needs imageio-ffmpeg (it ships its own ffmpeg): "
                          "pip install 'minilisten[video]' (or pip install imageio-ffmpeg)") from None
    return imageio_ffmpeg


def write_mp4(frames: Iterable[np.ndarray], out_path: str | os.PathLike, fps: float, quality: int = 7) -> Path:
    """H.264 mp4 (yuv420p) of uint8 RGB frames of one size (a multiple of 16 on both sides).
    Written to a temporary name and renamed at the end, so a failed run leaves no partial file."""
    ff = _ffmpeg()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}{out.suffix}")
    writer, n = None, 0
    try:
        for fr in frames:
            if writer is None:
                h, w = fr.shape[:2]
                writer = ff.write_frames(str(tmp), (w, h), fps=fps, quality=quality, macro_block_size=16,
                                         ffmpeg_log_level="error")
                writer.send(None)
            writer.send(np.ascontiguousarray(fr))
            n += 1
        if writer is None:
            raise ValueError(f"{out}: expected at least 1 frame to write, got 0")
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
    return out


def read_mp4(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Frames ``(N, H, W, 3)`` uint8 and fps of a video (through imageio-ffmpeg)."""
    ff = _ffmpeg()
    gen = ff.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    frames = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]
    return np.stack(frames), float(meta["fps"])


def save_png(path: str | os.PathLike, img: np.ndarray) -> Path:
    """A uint8 RGB image ``(H, W, 3)`` as PNG (zlib only, no imaging library)."""
    img = np.ascontiguousarray(img, np.uint8)
    h, w = img.shape[:2]
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(png)
    return p


def render_clip(speaker_motion, listener_motions: dict, words, fps: float, out_path, flame=None, beta=None,
                speaker_beta=None, size: int = 256, progress: bool = True, still: int | None = None,
                ssaa: int = 2) -> Path:
    """Write the mp4 of :func:`render_frames` to ``out_path``; ``still``: also save that frame as
    ``<out_path>.png`` (e.g. for a README figure). Returns the mp4's path."""
    from tqdm import tqdm
    frames = render_frames(speaker_motion, listener_motions, words, fps, flame, beta, speaker_beta, size, ssaa=ssaa)
    T = len(speaker_motion)
    if still is not None and not (isinstance(still, (int, np.integer)) and 0 <= still < T):
        raise ValueError(f"still: expected a frame index in [0, {T}), got {still!r}")
    out = Path(out_path)

    def tee():
        for i, fr in enumerate(tqdm(frames, total=T, desc="render", unit="frame", disable=not progress)):
            if i == still:
                save_png(out.with_suffix(".png"), fr)
            yield fr
    return write_mp4(tee(), out, fps)


def render_segment(seg: Segment, preds: dict, out_path, flame=None, gt_label: str = "ground truth", **kw) -> Path:
    """Speaker | ``preds`` (name -> ``(T, 56)``, dict order) | the segment's ground-truth listener,
    with its words, fps and betas."""
    lis = {**preds, gt_label: seg.listener_motion}
    return render_clip(seg.speaker_motion, lis, seg.words, seg.fps, out_path, flame, seg.listener_beta,
                       seg.speaker_beta, **kw)


def render_demo_clip(out_dir, clip: Segment, preds: dict, flame=None, name: str = "clip.mp4",
                     progress: bool = True, ssaa: int = 2) -> Path | None:
    """``<out_dir>/clip.mp4`` (and ``clip.png``, its middle frame) for the demo: speaker | each
    prediction of ``preds`` (name -> ``(T, 56)`` for this clip) | ground truth. Returns None, with
    a message, when imageio-ffmpeg is not installed (the demo's other outputs do not need it)."""
    try:
        _ffmpeg()
    except ImportError as e:
        print(f"render: skipped {Path(out_dir) / name}: {e}", flush=True)
        return None
    return render_segment(clip, preds, Path(out_dir) / name, flame, progress=progress, still=clip.T // 2, ssaa=ssaa)


# ----------------------------------------------------------------------------- CLI
def _load_motion(spec: str, what: str) -> np.ndarray:
    """``FILE.npy`` or ``FILE.npz:KEY`` -> array (read without unpickling code)."""
    from .safe_pickle import load_npy, load_npz
    path, _, key = spec.partition(":") if (":" in spec and not os.path.exists(spec)) else (spec, "", "")
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} {spec}: expected a .npy file or FILE.npz:KEY, got no such file {p}")
    if p.suffix == ".npz":
        d = load_npz(p)
        if not key:
            if len(d) != 1:
                raise ValueError(f"{what} {spec}: expected FILE.npz:KEY for an .npz of several arrays, keys {sorted(d)}")
            key = next(iter(d))
        if key not in d:
            raise ValueError(f"{what} {spec}: expected one of the keys {sorted(d)}, got {key!r}")
        return d[key]
    return load_npy(p)


def load_words(path: str | os.PathLike) -> list[Word]:
    """Words from JSON: ``[{"text", "start", "end"}, ...]``, ``[[text, start, end], ...]`` or a
    Whisper transcript with word timestamps (``{"segments": [{"words": [...]}]}``)."""
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--words {p}: expected a JSON file of words, got {type(e).__name__}: {e}") from None
    if isinstance(d, dict) or (isinstance(d, list) and d and isinstance(d[0], dict) and "words" in d[0]):
        from .speaker import read_whisper_words
        return read_whisper_words(d)[0]
    if not isinstance(d, list):
        raise ValueError(f"--words {p}: expected a list of words or a Whisper transcript, got {type(d).__name__}")
    try:
        return _check_words(d)
    except ValueError as e:
        raise ValueError(f"--words {p}: {e}") from None


def _parser() -> argparse.ArgumentParser:
    from .data.cli import add_data_args
    p = ArgumentParser(
        prog="python -m minilisten render", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Side-by-side mp4 of speaker | listener(s) | ground truth with the speaker's words "
                    "(schematic heads, or the FLAME mesh with --flame).",
        epilog="from saved arrays:\n"
               "  python -m minilisten render --speaker spk.npy --listener gen.npy --gt gt.npy --words words.json --out clip.mp4\n"
               "from trained models (generates the listener of a test clip):\n"
               "  python -m minilisten render --vq runs/demo/vq_disentangled --lm runs/demo/lm_full --clip 0 --out clip.mp4\n"
               "arrays are (T, 56) = FLAME expression 50 | global rotation 3 | jaw 3; FILE.npy or FILE.npz:KEY")
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
    m = p.add_argument_group("trained models (instead of --speaker)")
    m.add_argument("--vq", metavar="DIR", help="VQ-VAE checkpoint directory")
    m.add_argument("--lm", metavar="DIR", help="ListenerLM checkpoint directory")
    m.add_argument("--name", default="generated", help="label of this model's listener (default: %(default)s)")
    m.add_argument("--vq2", metavar="DIR", help="a second method's VQ-VAE (e.g. LM-listener's naive one)")
    m.add_argument("--lm2", metavar="DIR", help="a second method's ListenerLM (e.g. words-only)")
    m.add_argument("--name2", default="second method", help="label of the second method (default: %(default)s)")
    m.add_argument("--split", choices=("train", "val", "test"), default="test")
    m.add_argument("--clip", type=int, default=0, help="index of the evaluation clip (default: %(default)s)")
    add_data_args(p)
    return p


def _from_models(a) -> tuple[Segment, dict]:
    from .data.cli import load_data
    from .demo import generate_motion, test_clips
    from .lm import ListenerLM
    from .vqvae import VQVAE
    if not (a.vq and a.lm):
        raise ValueError("--vq/--lm: expected both a VQ-VAE and a ListenerLM checkpoint directory, got "
                         f"--vq {a.vq} --lm {a.lm}")
    if bool(a.vq2) != bool(a.lm2):
        raise ValueError(f"--vq2/--lm2: expected both or neither, got --vq2 {a.vq2} --lm2 {a.lm2}")
    ds, what = load_data(a)
    segs = getattr(ds, a.split)
    clips = test_clips(segs)
    if not clips:
        raise ValueError(f"--split {a.split}: expected segments of >= 16 frames in {what}, got none")
    if not 0 <= a.clip < len(clips):
        raise ValueError(f"--clip: expected an index in [0, {len(clips)}) (clips of split {a.split} of {what}), got {a.clip}")
    clip = clips[a.clip]
    preds = {}
    for vq_dir, lm_dir, name in ((a.vq, a.lm, a.name), (a.vq2, a.lm2, a.name2)):
        if not vq_dir:
            continue
        vq, lm = VQVAE.from_pretrained(vq_dir).eval(), ListenerLM.from_pretrained(lm_dir).eval()
        if vq.needs_beta and clip.listener_beta is None:
            raise ValueError(f"--vq {vq_dir}: this VQ-VAE decodes with the listener's beta (100,), {what} has none")
        preds[name] = generate_motion(lm, vq, [clip])[1][0]
    print(f"{what}: clip {a.clip} of {len(clips)} ({a.split}), {clip.T} frames at {clip.fps:g} fps, {len(clip.words)} words")
    return clip, preds


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    from .flame import load_flame
    flame = load_flame(a.flame) if a.flame else None
    try:
        _ffmpeg()
    except ImportError as e:
        raise ValueError(str(e)) from None
    if a.vq or a.lm:
        if a.speaker or a.listener or a.gt:
            raise ValueError("--vq/--lm: expected either trained models or saved arrays (--speaker/--listener/--gt), got both")
        clip, preds = _from_models(a)
        out = render_segment(clip, preds, a.out, flame, size=a.size, progress=not a.no_progress, still=a.still,
                             ssaa=a.ssaa)
    else:
        if not a.speaker:
            raise ValueError("--speaker: expected a speaker motion file (T, 56) (or --vq/--lm to generate), got none")
        lis = {}
        for spec in a.listener:
            name, eq, path = spec.partition("=")
            name, path = (name, path) if eq else ("generated" if not lis else f"listener {len(lis) + 1}", spec)
            lis[name] = _load_motion(path, "--listener")
        if a.gt:
            lis["ground truth"] = _load_motion(a.gt, "--gt")
        if not lis:
            raise ValueError("--listener/--gt: expected at least one listener motion to draw, got none")
        words = load_words(a.words) if a.words else []
        beta = _load_motion(a.beta, "--beta") if a.beta else None
        sbeta = _load_motion(a.speaker_beta, "--speaker-beta") if a.speaker_beta else None
        out = render_clip(_load_motion(a.speaker, "--speaker"), lis, words, a.fps, a.out, flame, beta, sbeta,
                          size=a.size, progress=not a.no_progress, still=a.still, ssaa=a.ssaa)
    print(f"wrote {out}" + (f" and {out.with_suffix('.png')}" if a.still is not None else ""))
    return 0
