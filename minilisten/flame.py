"""FLAME head mesh from minilisten's 56 motion numbers, in numpy (no chumpy, no torch needed).

The user supplies the model file (FLAME 2020 ``generic_model.pkl``, licensed by MPI-IS, never
shipped). It is a Python 2 pickle holding numpy arrays, ``chumpy.ch.Ch`` objects (``shapedirs``,
sometimes ``v_template``/``posedirs``) and a ``scipy.sparse`` matrix (``J_regressor``).
:func:`load_flame` reads it with :class:`FlamePickleReader`, a
:class:`~minilisten.safe_pickle.RestrictedUnpickler` that maps those two kinds of objects to inert
placeholders holding their state (the arrays) and converts them to plain arrays afterwards:
neither chumpy nor scipy is imported, nothing from the file is called, every other global is
refused (:class:`~minilisten.safe_pickle.UnsafePickleError`).

Keys used (``V`` vertices, ``J = 5`` joints: root/global, neck, jaw, left eye, right eye):
``v_template (V, 3)``, ``shapedirs (V, 3, 400)`` (300 shape then 100 expression components),
``posedirs (V, 3, 9 (J - 1))``, ``J_regressor (J, V)``, ``weights (V, J)``, ``kintree_table
(2, J)`` (row 0: parents, the root's parent is any invalid index) and ``f (F, 3)`` faces.

Mapping of a motion frame (``minilisten.data.segment``: expression ``[0:50]``, pose ``[50:56]``)
as in DECA/EMOCA, whose coefficients LM-listener and Learning2Listen store:
- ``motion[0:50]`` = the first 50 FLAME expression coefficients (the other 50 are 0);
- ``motion[50:53]`` = global (root joint) rotation, axis-angle in radians, FLAME's frame (x to the
  subject's left, y up, z out of the face): ``[0]`` pitch (+ = head down), ``[1]`` yaw, ``[2]`` roll;
- ``motion[53:56]`` = jaw rotation, axis-angle (``[0] > 0`` opens the mouth);
- neck and eye rotations are 0 (DECA's convention: they are not estimated);
- ``beta (100,)`` = the first 100 of FLAME's 300 shape coefficients (the others 0); none = mean shape.

The forward pass (:meth:`FlameModel.vertices`) is FLAME's / SMPL's, as in FLAME_PyTorch and
smplx ``lbs``: ``v_shaped = v_template + shapedirs @ [beta | exp]``, joints ``J_regressor @
v_shaped``, pose blend shapes ``posedirs @ vec(R_j - I)`` over the non-root joints, then linear
blend skinning with the joints' world transforms.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .safe_pickle import RestrictedUnpickler, UnsafePickleError, _run

N_EXP_MODEL = 100   # FLAME's expression components (the last 100 of shapedirs)
N_JOINTS = 5        # root (global), neck, jaw, left eye, right eye
ROOT, NECK, JAW = 0, 1, 2


# ----------------------------------------------------------------------------- reading the pickle
class _Placeholder:
    """An inert stand-in for a pickled class: it only stores the pickled state (never runs code)."""
    source = ""

    def __init__(self, *args, **kwargs):   # only reached through our own _reconstructor / NEWOBJ
        self.args = args
        self.state = None

    @classmethod
    def _new(cls, *args):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __setstate__(self, state):
        self.state = state

    def __reduce__(self):   # never re-pickled
        raise TypeError(f"{type(self).__name__} is a placeholder of {self.source} and cannot be pickled")


class ChumpyArray(_Placeholder):
    """Placeholder of ``chumpy.ch.Ch``: its state dict holds the value as ``x``."""
    source = "chumpy.ch.Ch"


class SparseMatrix(_Placeholder):
    """Placeholder of a ``scipy.sparse`` matrix (csc/csr/coo): state ``data``, ``indices``/``indptr``
    or ``row``/``col``, ``_shape``."""
    source = "scipy.sparse"
    fmt = ""


def _sparse_class(fmt: str) -> type:
    return type(f"SparseMatrix_{fmt}", (SparseMatrix,), {"fmt": fmt, "source": f"scipy.sparse {fmt}_matrix"})


_SPARSE = {f: _sparse_class(f) for f in ("csc", "csr", "coo")}


def _reconstructor(cls, base, state, where: str = "pickle"):
    """Safe ``copyreg._reconstructor`` (protocol 0/1 objects): placeholders only."""
    if not (isinstance(cls, type) and issubclass(cls, _Placeholder)) or base is not object or state is not None:
        raise UnsafePickleError(f"{where}: refused copyreg._reconstructor({cls!r}, {base!r}, {state!r}): only "
                                f"chumpy.ch.Ch and scipy.sparse matrices are reconstructed (as inert placeholders)")
    return cls._new()


class FlamePickleReader(RestrictedUnpickler):
    """:class:`RestrictedUnpickler` (numpy + plain values) plus placeholders for ``chumpy.ch.Ch``
    and ``scipy.sparse`` csc/csr/coo matrices; Python 2 strings decoded as latin-1 (numpy's bytes)."""

    def __init__(self, file, where: str = "pickle"):
        import pickle
        pickle.Unpickler.__init__(self, file, encoding="latin1")
        self.where = where

    def find_class(self, module: str, name: str):
        if module == "chumpy.ch" and name == "Ch":
            return ChumpyArray
        if module.startswith("scipy.sparse") and name[:3] in _SPARSE and name[3:] in ("_matrix", "_array"):
            return _SPARSE[name[:3]]
        if (module, name) in (("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")):
            return lambda cls, base, state: _reconstructor(cls, base, state, self.where)
        if (module, name) in (("__builtin__", "object"), ("builtins", "object")):   # _reconstructor's base
            return object
        return super().find_class(module, name)


def _to_array(key: str, obj, where: str) -> np.ndarray:
    """A placeholder / array / list -> plain numpy array (dense for sparse matrices)."""
    if isinstance(obj, ChumpyArray):
        st = obj.state
        if not isinstance(st, dict) or not isinstance(st.get("x"), np.ndarray):
            raise ValueError(f"{where}[{key!r}]: expected a chumpy.ch.Ch holding an array 'x', got state "
                             f"{type(st).__name__} with keys {sorted(st) if isinstance(st, dict) else '-'}")
        return np.asarray(st["x"])
    if isinstance(obj, SparseMatrix):
        st = obj.state
        if not isinstance(st, dict):
            raise ValueError(f"{where}[{key!r}]: expected a scipy.sparse state dict, got {type(st).__name__}")
        shape = st.get("_shape", st.get("shape"))
        need = ("data", "row", "col") if obj.fmt == "coo" else ("data", "indices", "indptr")
        if shape is None or any(not isinstance(st.get(k), np.ndarray) for k in need):
            raise ValueError(f"{where}[{key!r}]: expected a {obj.fmt} matrix state with _shape and {', '.join(need)}, "
                             f"got keys {sorted(st)}")
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or min(shape) < 0:
            raise ValueError(f"{where}[{key!r}]: expected a 2-d sparse shape, got {shape}")
        out = np.zeros(shape, np.float64)
        data = st["data"].astype(np.float64)
        try:
            if obj.fmt == "coo":
                np.add.at(out, (st["row"].astype(np.int64), st["col"].astype(np.int64)), data)
            else:
                indptr, idx = st["indptr"].astype(np.int64), st["indices"].astype(np.int64)
                outer = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
                rows, cols = (idx, outer) if obj.fmt == "csc" else (outer, idx)
                np.add.at(out, (rows, cols), data)
        except (IndexError, ValueError) as e:
            raise ValueError(f"{where}[{key!r}]: inconsistent {obj.fmt} sparse matrix of shape {shape}: {e}") from None
        return out
    if isinstance(obj, _Placeholder):   # pragma: no cover - every placeholder class is handled above
        raise ValueError(f"{where}[{key!r}]: unsupported object {obj.source}")
    try:
        a = np.asarray(obj)
    except ValueError as e:
        raise ValueError(f"{where}[{key!r}]: expected an array, got {type(obj).__name__} ({e})") from None
    if a.dtype == object:
        raise ValueError(f"{where}[{key!r}]: expected a numeric array, got an object array of {type(obj).__name__}")
    return a


def read_flame_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a FLAME ``.pkl`` (chumpy / scipy.sparse objects made plain arrays); keys that
    are not arrays (``bs_style``, ``bs_type`` strings) are kept as they are."""
    p = Path(path)
    where = str(p)
    with open(p, "rb") as f:
        data = f.read()
    raw = _run(lambda: FlamePickleReader(io.BytesIO(data), where).load(), where)
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a FLAME model pickle (a dict of arrays), got {type(raw).__name__}")
    return {k: (v if isinstance(v, str) else _to_array(k, v, where)) for k, v in raw.items()}


# ----------------------------------------------------------------------------- rotations
def rodrigues(aa: np.ndarray) -> np.ndarray:
    """Axis-angle ``(..., 3)`` (radians) -> rotation matrices ``(..., 3, 3)``."""
    aa = np.asarray(aa, np.float64)
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)                 # (..., 1)
    safe = np.where(theta < 1e-12, 1.0, theta)
    k = aa / safe
    K = np.zeros(aa.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    K[..., 1, 0], K[..., 2, 0], K[..., 2, 1] = k[..., 2], -k[..., 1], k[..., 0]
    s, c = np.sin(theta)[..., None], np.cos(theta)[..., None]
    R = np.eye(3) + s * K + (1 - c) * (K @ K)
    small = (theta[..., 0] < 1e-12)
    if small.any():
        R[small] = np.eye(3)
    return R


# ----------------------------------------------------------------------------- the model
@dataclass
class FlameModel:
    """A FLAME model as plain arrays (``V`` vertices, ``J`` joints, ``F`` faces):
    v_template ``(V, 3)``, shapedirs ``(V, 3, S)``, expdirs ``(V, 3, 100)``, posedirs
    ``(V, 3, 9 (J - 1))``, J_regressor ``(J, V)``, weights ``(V, J)``, parents ``(J,)`` (root -1),
    faces ``(F, 3)`` int64."""
    v_template: np.ndarray
    shapedirs: np.ndarray
    expdirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    faces: np.ndarray
    source: str = ""

    @classmethod
    def from_arrays(cls, d: dict, where: str = "FLAME model") -> "FlameModel":
        """Validate the arrays of a FLAME pickle (see the module doc for the keys)."""
        need = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
        missing = [k for k in need if k not in d]
        if missing:
            raise ValueError(f"{where}: missing key(s) {', '.join(missing)}: expected a FLAME model with keys "
                             f"{', '.join(need)}, got {', '.join(sorted(map(str, d)))}")
        def arr(k, ndim):
            a = np.asarray(d[k])
            if a.ndim != ndim or not (np.issubdtype(a.dtype, np.number)):
                raise ValueError(f"{where}[{k!r}]: expected a numeric {ndim}-d array, got shape {a.shape} dtype {a.dtype}")
            return a
        v = arr("v_template", 2).astype(np.float64)
        V = v.shape[0]
        if v.shape[1] != 3 or V < 3:
            raise ValueError(f"{where}['v_template']: expected shape (V, 3), got {v.shape}")
        sd = arr("shapedirs", 3).astype(np.float64)
        if sd.shape[:2] != (V, 3) or sd.shape[2] < N_EXP_MODEL + 1:
            raise ValueError(f"{where}['shapedirs']: expected shape ({V}, 3, S + {N_EXP_MODEL}) (S shape then "
                             f"{N_EXP_MODEL} expression components; FLAME 2020: 400), got {sd.shape}")
        kt = arr("kintree_table", 2)
        if kt.shape[0] != 2 or kt.shape[1] < 3:
            raise ValueError(f"{where}['kintree_table']: expected shape (2, J) with J >= 3 (root, neck, jaw...), got {kt.shape}")
        J = kt.shape[1]
        parents = kt[0].astype(np.int64)
        parents[0] = -1
        for j in range(1, J):
            if not 0 <= parents[j] < j:
                raise ValueError(f"{where}['kintree_table']: expected each joint's parent to come before it, "
                                 f"got parent {int(kt[0][j])} for joint {j}")
        pd = arr("posedirs", 3).astype(np.float64)
        if pd.shape != (V, 3, 9 * (J - 1)):
            raise ValueError(f"{where}['posedirs']: expected shape ({V}, 3, {9 * (J - 1)}), got {pd.shape}")
        jr = arr("J_regressor", 2).astype(np.float64)
        if jr.shape != (J, V):
            raise ValueError(f"{where}['J_regressor']: expected shape ({J}, {V}), got {jr.shape}")
        w = arr("weights", 2).astype(np.float64)
        if w.shape != (V, J):
            raise ValueError(f"{where}['weights']: expected shape ({V}, {J}), got {w.shape}")
        f = arr("f", 2)
        if f.shape[1:] != (3,) or not np.issubdtype(f.dtype, np.integer) or (f.size and (f.min() < 0 or f.max() >= V)):
            raise ValueError(f"{where}['f']: expected integer faces (F, 3) indexing {V} vertices, got shape {f.shape} "
                             f"dtype {f.dtype}" + (f" range [{f.min()}, {f.max()}]" if f.size else ""))
        for k, a in (("v_template", v), ("shapedirs", sd), ("posedirs", pd), ("J_regressor", jr), ("weights", w)):
            if not np.isfinite(a).all():
                raise ValueError(f"{where}[{k!r}]: expected finite values, got NaN/inf")
        return cls(v, sd[:, :, :-N_EXP_MODEL], sd[:, :, -N_EXP_MODEL:], pd, jr, w, parents,
                   f.astype(np.int64), where)

    @property
    def n_shape(self) -> int:
        return int(self.shapedirs.shape[2])

    def vertices(self, exp: np.ndarray, pose: np.ndarray, beta: np.ndarray | None = None,
                 neck: np.ndarray | None = None) -> np.ndarray:
        """Posed vertices ``(T, V, 3)`` for expression ``exp (T, E <= 100)``, pose ``(T, 6)``
        (global 3 | jaw 3, axis-angle), shape ``beta (B <= S,)`` (None = mean shape), optional
        neck rotation ``(T, 3)``; eye rotations are 0."""
        exp, pose = np.asarray(exp, np.float64), np.asarray(pose, np.float64)
        T = pose.shape[0]
        if exp.ndim != 2 or exp.shape[0] != T or exp.shape[1] > N_EXP_MODEL:
            raise ValueError(f"exp: expected shape ({T}, <= {N_EXP_MODEL}), got {exp.shape}")
        if pose.ndim != 2 or pose.shape[1] != 6:
            raise ValueError(f"pose: expected shape (T, 6) (global 3 | jaw 3), got {pose.shape}")
        v = self.v_template[None].repeat(T, 0)                                   # (T, V, 3)
        if beta is not None:
            beta = np.asarray(beta, np.float64)
            if beta.ndim != 1 or beta.shape[0] > self.n_shape:
                raise ValueError(f"beta: expected shape (<= {self.n_shape},), got {beta.shape}")
            v = v + np.einsum("vcs,s->vc", self.shapedirs[:, :, :len(beta)], beta)[None]
        v = v + np.einsum("vce,te->tvc", self.expdirs[:, :, :exp.shape[1]], exp)
        J = self.J_regressor.shape[0]
        joints = np.einsum("jv,tvc->tjc", self.J_regressor, v)                  # (T, J, 3)
        aa = np.zeros((T, J, 3))
        aa[:, ROOT], aa[:, JAW] = pose[:, :3], pose[:, 3:]
        if neck is not None:
            aa[:, NECK] = np.asarray(neck, np.float64).reshape(T, 3)
        R = rodrigues(aa)                                                        # (T, J, 3, 3)
        feat = (R[:, 1:] - np.eye(3)).reshape(T, -1)                             # (T, 9 (J - 1))
        v = v + np.einsum("vcp,tp->tvc", self.posedirs, feat)
        A = rigid_transforms(R, joints, self.parents)                            # (T, J, 4, 4)
        G = np.einsum("vj,tjab->tvab", self.weights, A)                          # (T, V, 4, 4)
        return np.einsum("tvab,tvb->tva", G[..., :3, :3], v) + G[..., :3, 3]

    def motion_vertices(self, motion: np.ndarray, beta: np.ndarray | None = None) -> np.ndarray:
        """Vertices ``(T, V, 3)`` of minilisten motion ``(T, 56)`` (mapping: module doc)."""
        from .data.segment import EXP, POSE
        motion = np.asarray(motion)
        return self.vertices(motion[:, EXP], motion[:, POSE], beta)


def rigid_transforms(R: np.ndarray, joints: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Per-joint skinning transforms ``(T, J, 4, 4)`` from local rotations ``R (T, J, 3, 3)`` and
    rest joints ``(T, J, 3)``: world transform of each joint with its rest position subtracted
    (smplx ``batch_rigid_transform``), so ``A_j @ [x, 1]`` moves a rest-pose point with joint j."""
    T, J = R.shape[:2]
    rel = joints.copy()
    rel[:, 1:] -= joints[:, parents[1:]]
    local = np.zeros((T, J, 4, 4))
    local[..., :3, :3], local[..., :3, 3], local[..., 3, 3] = R, rel, 1.0
    world = [local[:, 0]]
    for j in range(1, J):
        world.append(world[parents[j]] @ local[:, j])
    W = np.stack(world, 1)                                                       # (T, J, 4, 4)
    A = W.copy()
    A[..., :3, 3] -= np.einsum("tjab,tjb->tja", W[..., :3, :3], joints)
    return A


def load_flame(path: str | os.PathLike) -> FlameModel:
    """A user-supplied FLAME model file (``generic_model.pkl`` of FLAME 2020, or ``.npz`` with the
    same keys), read without running code from it."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--flame {p}: expected a FLAME model file (generic_model.pkl from flame.is.tue.mpg.de), "
                         f"got no such file")
    if p.suffix == ".npz":
        from .safe_pickle import load_npz
        d = load_npz(p)
    else:
        d = read_flame_pickle(p)
    return FlameModel.from_arrays(d, str(p))
