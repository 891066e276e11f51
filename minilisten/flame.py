"""FLAME head mesh from minilisten's 56 motion numbers (expression 50 | global rotation 3 | jaw 3), in numpy:
:func:`load_flame` reads the user's FLAME 2020 ``generic_model.pkl`` without running code from it (chumpy and
scipy.sparse objects become inert placeholders); :meth:`FlameModel.vertices` is smplx's ``lbs``. docs/models.md."""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data.segment import EXP, N_SHAPE, POSE, _check_array
from .errors import UserError
from .safe_pickle import RestrictedUnpickler, UnsafePickleError, _run

N_EXP_MODEL = 100   # FLAME's expression components (the last 100 of shapedirs)
N_JOINTS = 5        # root (global), neck, jaw, left eye, right eye
ROOT, JAW = 0, 2
SPARSE = ("csc", "csr", "coo")


class _Placeholder:
    """An inert stand-in for a pickled object: it only stores the pickled state (never runs code)."""
    source = ""
    state = None

    def __init__(self, *args, **kwargs):   # lets NEWOBJ pass the pickled args to object.__new__
        pass

    def __setstate__(self, state):
        self.state = state


_PLACEHOLDERS = {s: type(f"Placeholder_{s}", (_Placeholder,), {"source": s}) for s in ("chumpy", *SPARSE)}


class FlamePickleReader(RestrictedUnpickler):
    """:class:`RestrictedUnpickler` (numpy + plain values) plus placeholders for ``chumpy.ch.Ch`` and
    ``scipy.sparse`` csc/csr/coo matrices; Python 2 strings decoded as latin-1 (numpy's bytes)."""

    def __init__(self, file, where: str = "pickle"):
        import pickle
        pickle.Unpickler.__init__(self, file, encoding="latin1")
        self.where = where

    def find_class(self, module: str, name: str):
        if module == "chumpy.ch" and name == "Ch":
            return _PLACEHOLDERS["chumpy"]
        if module.startswith("scipy.sparse") and name[:3] in SPARSE and name[3:] in ("_matrix", "_array"):
            return _PLACEHOLDERS[name[:3]]
        if (module, name) in (("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")):
            return self._reconstructor
        if (module, name) in (("__builtin__", "object"), ("builtins", "object")):   # _reconstructor's base
            return object
        return super().find_class(module, name)

    def _reconstructor(self, cls, base, state):
        """Safe ``copyreg._reconstructor`` (protocol 0/1 objects): placeholders only."""
        if not (isinstance(cls, type) and issubclass(cls, _Placeholder)) or base is not object or state is not None:
            raise UnsafePickleError(f"{self.where}: refused copyreg._reconstructor({cls!r}, {base!r}, {state!r}): "
                                    "only chumpy.ch.Ch and scipy.sparse matrices are rebuilt (as inert placeholders)")
        return object.__new__(cls)


def _to_array(key: str, obj, where: str) -> np.ndarray:
    """A placeholder / array / list -> plain numpy array (dense for sparse matrices)."""
    where = f"{where}[{key!r}]"
    st = getattr(obj, "state", None)
    if isinstance(obj, _PLACEHOLDERS["chumpy"]):
        if not isinstance(st, dict) or not isinstance(st.get("x"), np.ndarray):
            raise UserError(f"{where}: expected a chumpy.ch.Ch holding an array 'x', got state {type(st).__name__}")
        return np.asarray(st["x"])
    if isinstance(obj, _Placeholder):   # a scipy.sparse csc / csr / coo matrix
        import scipy.sparse as sp
        fmt = obj.source
        try:
            parts = (st["data"], (st["row"], st["col"])) if fmt == "coo" else (st["data"], st["indices"], st["indptr"])
            shape = tuple(int(n) for n in st.get("_shape", st.get("shape")))
            return getattr(sp, f"{fmt}_matrix")(parts, shape=shape).toarray().astype(np.float64)
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise UserError(f"{where}: expected a consistent {fmt} matrix state (data, indices/indptr or row/col, "
                            f"_shape), got {type(e).__name__}: {e}") from None
    return np.asarray(obj)


def read_flame_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a FLAME ``.pkl`` (chumpy / scipy.sparse objects made plain arrays); string values
    (``bs_style``, ``bs_type``) are kept as they are."""
    where = str(path)
    data = Path(path).read_bytes()
    raw = _run(lambda: FlamePickleReader(io.BytesIO(data), where).load(), where)
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a FLAME model pickle (a dict of arrays), got {type(raw).__name__}")
    return {k: (v if isinstance(v, str) else _to_array(k, v, where)) for k, v in raw.items()}


def rodrigues(aa: np.ndarray) -> np.ndarray:
    """Axis-angle ``(..., 3)`` (radians) -> rotation matrices ``(..., 3, 3)``."""
    from scipy.spatial.transform import Rotation
    aa = np.asarray(aa, np.float64)
    return Rotation.from_rotvec(aa.reshape(-1, 3)).as_matrix().reshape(aa.shape[:-1] + (3, 3))


@dataclass
class FlameModel:
    """A FLAME model as plain arrays (``V`` vertices, ``J`` joints, ``F`` faces): v_template ``(V, 3)``,
    shapedirs ``(V, 3, S)``, expdirs ``(V, 3, 100)``, posedirs ``(V, 3, 9 (J - 1))``, J_regressor ``(J, V)``,
    weights ``(V, J)``, parents ``(J,)`` (root -1), faces ``(F, 3)`` int64."""
    v_template: np.ndarray
    shapedirs: np.ndarray
    expdirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    faces: np.ndarray

    @classmethod
    def from_arrays(cls, d: dict, where: str = "FLAME model") -> "FlameModel":
        """Validate the arrays of a FLAME pickle (keys: docs/models.md)."""
        need = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
        missing = [k for k in need if k not in d]
        if missing:
            raise UserError(f"{where}: missing key(s) {', '.join(missing)}: expected a FLAME model with keys "
                            f"{', '.join(need)}, got {', '.join(sorted(map(str, d)))}")
        V, J = len(d["v_template"]), np.shape(d["kintree_table"])[-1]
        shapes = {"v_template": (V, 3), "shapedirs": (V, 3, None), "posedirs": (V, 3, 9 * (J - 1)),
                  "J_regressor": (J, V), "weights": (V, J), "kintree_table": (2, J), "f": (None, 3)}
        a = {k: _check_array(f"{where}[{k!r}]", d[k], shape, np.int64 if k in ("kintree_table", "f") else np.float64)
             for k, shape in shapes.items()}
        if V < 3 or J < 3 or a["shapedirs"].shape[2] < N_SHAPE + N_EXP_MODEL:
            raise UserError(f"{where}: expected >= 3 vertices, >= 3 joints (root, neck, jaw) and shapedirs of >= "
                            f"{N_SHAPE} + {N_EXP_MODEL} components, got {V}, {J}, {a['shapedirs'].shape[2]}")
        parents = a["kintree_table"][0].copy()
        parents[0] = -1
        if any(not 0 <= parents[j] < j for j in range(1, J)):
            raise UserError(f"{where}['kintree_table']: expected each joint's parent before it, got {parents.tolist()}")
        f = a["f"]
        if f.size and (f.min() < 0 or f.max() >= V):
            raise UserError(f"{where}['f']: expected faces indexing {V} vertices, got indices {f.min()}..{f.max()}")
        sd = a["shapedirs"]
        return cls(a["v_template"], sd[:, :, :-N_EXP_MODEL], sd[:, :, -N_EXP_MODEL:], a["posedirs"],
                   a["J_regressor"], a["weights"], parents, f)

    def vertices(self, exp: np.ndarray, pose: np.ndarray, beta: np.ndarray | None = None) -> np.ndarray:
        """Posed vertices ``(T, V, 3)`` of expression ``(T, E <= 100)``, pose ``(T, 6)`` (global | jaw,
        axis-angle) and shape ``beta (B <= S,)`` (None: mean shape); neck and eyes stay at rest."""
        exp, pose = np.asarray(exp, np.float64), np.asarray(pose, np.float64)
        T = pose.shape[0]
        v = self.v_template[None].repeat(T, 0)                                   # (T, V, 3)
        if beta is not None:
            v = v + np.einsum("vcs,s->vc", self.shapedirs[:, :, :len(beta)], np.asarray(beta, np.float64))[None]
        v = v + np.einsum("vce,te->tvc", self.expdirs[:, :, :exp.shape[1]], exp)
        J = self.J_regressor.shape[0]
        joints = np.einsum("jv,tvc->tjc", self.J_regressor, v)                  # (T, J, 3)
        aa = np.zeros((T, J, 3))
        aa[:, ROOT], aa[:, JAW] = pose[:, :3], pose[:, 3:]
        R = rodrigues(aa)                                                        # (T, J, 3, 3)
        feat = (R[:, 1:] - np.eye(3)).reshape(T, -1)                             # (T, 9 (J - 1))
        v = v + np.einsum("vcp,tp->tvc", self.posedirs, feat)
        A = rigid_transforms(R, joints, self.parents)                            # (T, J, 4, 4)
        G = np.einsum("vj,tjab->tvab", self.weights, A)                          # (T, V, 4, 4)
        return np.einsum("tvab,tvb->tva", G[..., :3, :3], v) + G[..., :3, 3]

    def motion_vertices(self, motion: np.ndarray, beta: np.ndarray | None = None) -> np.ndarray:
        """Vertices ``(T, V, 3)`` of minilisten motion ``(T, 56)``."""
        motion = np.asarray(motion)
        return self.vertices(motion[:, EXP], motion[:, POSE], beta)


def rigid_transforms(R: np.ndarray, joints: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Skinning transforms ``(T, J, 4, 4)`` from local rotations ``R (T, J, 3, 3)`` and rest joints
    ``(T, J, 3)``: each joint's world transform with its rest position removed (smplx ``batch_rigid_transform``)."""
    T, J = R.shape[:2]
    rel = joints.copy()
    rel[:, 1:] -= joints[:, parents[1:]]
    local = np.zeros((T, J, 4, 4))
    local[..., :3, :3], local[..., :3, 3], local[..., 3, 3] = R, rel, 1.0
    world = [local[:, 0]]
    for j in range(1, J):
        world.append(world[parents[j]] @ local[:, j])
    A = np.stack(world, 1)                                                       # (T, J, 4, 4)
    A[..., :3, 3] -= np.einsum("tjab,tjb->tja", A[..., :3, :3], joints)
    return A


def load_flame(path: str | os.PathLike) -> FlameModel:
    """A user-supplied FLAME model (``generic_model.pkl`` of FLAME 2020, or ``.npz`` with the same keys),
    read without running code from it."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--flame {p}: expected a FLAME model file (generic_model.pkl from flame.is.tue.mpg.de), "
                        "got no such file")
    from .safe_pickle import load_npz
    return FlameModel.from_arrays(load_npz(p) if p.suffix == ".npz" else read_flame_pickle(p), str(p))
