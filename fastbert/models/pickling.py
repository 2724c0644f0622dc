"""Pickling the classes fastbert swaps onto HF modules in place.

``fastbert.optimize`` changes an HF module's class to one made at run time (the HF class
with a fastbert mixin before it, :func:`fastbert.models.base.fast_class`,
:func:`fastbert.models.heads.fast_head_class`). Such a class exists in a process only once
something there has made it, so instances pickle by the recipe instead: the module-level
function that makes the class and the HF class it is made from, both importable by name.
Unpickling in a fresh process (``torch.load``, a spawned worker) makes the class again.
"""

from __future__ import annotations

from typing import Callable


def reduce_swapped(obj, factory: Callable[[type], type], hf_class: type) -> tuple:
    """``obj.__reduce_ex__``'s answer for an instance of ``factory(hf_class)``."""
    return rebuild_swapped, (factory, hf_class), obj.__getstate__()


def rebuild_swapped(factory: Callable[[type], type], hf_class: type):
    """An empty instance of ``factory(hf_class)``; pickle then restores its state."""
    cls = factory(hf_class)
    return cls.__new__(cls)
