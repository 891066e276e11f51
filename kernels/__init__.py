"""Triton kernels with PyTorch references, installed as ``minilisten.kernels``: import the op modules
(``nearest_code``, ``norm_act``) and ``dispatch`` (which path runs)."""
if __name__ == "kernels":
    # From a checkout's root this directory is also visible as a top-level ``kernels``, the name of Hugging Face's
    # package that transformers >= 5.25 imports: step aside for an installed one, or fail as if none were found.
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _spec = _machinery.PathFinder.find_spec(
        "kernels", [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _root])
    if _spec is None:
        raise ModuleNotFoundError(f"No module named 'kernels' ({_os.path.dirname(__file__)} is minilisten's "
                                  "kernels, importable only as minilisten.kernels)", name="kernels")
    _module = _util.module_from_spec(_spec)
    _sys.modules["kernels"] = _module
    _spec.loader.exec_module(_module)
