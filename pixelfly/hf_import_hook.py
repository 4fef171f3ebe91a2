"""Register pixelfly's attention with transformers as soon as transformers can take it,
without importing torch or transformers from ``import pixelfly``.

transformers keeps its attention functions in ``transformers.modeling_utils``
(``AttentionInterface``). :func:`install` registers them at once when that module is
already loaded; otherwise it adds a finder to ``sys.meta_path`` that waits for the module's
first import, lets it run, removes itself and registers (importing
:mod:`pixelfly.hf_attention`, hence torch, which transformers has just imported anyway).
A failure there is a warning, never a failed transformers import.
``pixelfly.register_hf_attention()`` does the same explicitly.
"""
import importlib.abc
import sys
import warnings

TARGET = "transformers.modeling_utils"


def _register():
    try:
        from .hf_attention import register_hf_attention
        register_hf_attention()
    except Exception as exc:  # never break the user's transformers import
        warnings.warn(f"pixelfly could not register its attention with transformers ({exc!r}); "
                      "call pixelfly.register_hf_attention() to see why", stacklevel=2)


class _Loader(importlib.abc.Loader):
    """The target's own loader, and the registration once the module has run."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        uninstall()
        _register()

    def __getattr__(self, name):          # get_source, get_filename, ... of the real loader
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)
        return spec


_FINDER = _Finder()


def install():
    """Register now if transformers' ``modeling_utils`` is loaded, else on its first import."""
    if TARGET in sys.modules:
        _register()
    elif _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def uninstall():
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
