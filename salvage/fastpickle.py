"""Cheap pickling for the records that cross between the processes of a Bytewax cluster.

Bytewax pickles every item that goes to a worker of another process (a case view on its way to a
customer shard, an event to its case shard, a trigger to the output stage). Python's default for a
slotted dataclass calls ``dataclasses.fields()`` on every ``__getstate__`` and sets each field
through ``object.__setattr__`` on load; for a pydantic model it pickles a state dict of four
entries and rebuilds through ``__setstate__``. Profiled in a 2-process run (py-spy), the dataclass
part alone took ~12% of a process. Here:

* :func:`fast_pickle` (a class decorator for ``@dataclass(slots=True)`` classes) pickles an
  instance as its field values in order, rebuilt by a generated constructor that sets the slots
  directly (:func:`slot_maker`);
* :func:`reduce_model` (a ``__reduce__`` for pydantic models) pickles the field values in
  ``model_fields`` order and which of them were set as a bit mask, rebuilt without validation
  into the same ``__dict__`` (same key order), the same fields set and no extra or private
  attributes; a model that has extra or private attributes is pickled the default way.

The objects that come back are equal to the originals, field for field (property-tested in
``tests/salvage/test_fastpickle.py``), and pickles written the default way (older recovery
snapshots) still load.
"""

from __future__ import annotations

import copyreg
import dataclasses
from collections.abc import Callable
from operator import attrgetter
from typing import Any, TypeVar

from pydantic import BaseModel

T = TypeVar("T")

_MAKERS: dict[type, Callable[..., Any]] = {}
_NEWOBJ = copyreg.__newobj__  # type: ignore[attr-defined]  # pickle's NEWOBJ: the default way


def slot_maker(cls: type[T]) -> Callable[..., T]:
    """A constructor of the slotted dataclass ``cls`` taking its fields in order, that sets the
    slots directly (``__init__`` of a frozen dataclass goes through ``object.__setattr__`` per
    field: about twice the cost). ``cls`` itself when it has a ``__post_init__`` or no slots."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if hasattr(cls, "__post_init__") or not hasattr(cls, "__slots__"):
        return cls
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    for name in names:
        scope[f"_set_{name}"] = getattr(cls, name).__set__
    body = "".join(f"    _set_{name}(obj, {name})\n" for name in names)
    src = f"def make({', '.join(names)}):\n    obj = _new(_cls)\n{body}    return obj\n"
    exec(src, scope)  # generated from the class's own field names
    maker: Callable[..., T] = scope["make"]
    return maker


def revive(cls: type, values: tuple) -> Any:
    """Rebuild a :func:`fast_pickle` instance from its field values (what its pickle calls)."""
    make = _MAKERS.get(cls)
    if make is None:
        make = _MAKERS[cls] = slot_maker(cls)
    return make(*values)


def fast_pickle(cls: type[T]) -> type[T]:
    """Class decorator (above ``@dataclass(slots=True)``): pickle instances as ``revive(cls,
    field values)``."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    get = attrgetter(*names)
    if len(names) == 1:
        name = names[0]

        def __reduce__(self: Any) -> tuple:
            return (revive, (cls, (getattr(self, name),)))
    else:

        def __reduce__(self: Any) -> tuple:
            return (revive, (cls, get(self)))

    cls.__reduce__ = __reduce__  # type: ignore[method-assign]
    return cls


# pydantic models: the four slots every BaseModel instance has, set directly on load
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__

# per model class: (field names in order, their bits, fields set by mask)
_MODEL_META: dict[type, tuple[tuple[str, ...], dict[str, int], dict[int, set[str]]]] = {}


def _model_meta(cls: type[BaseModel]) -> tuple[tuple[str, ...], dict[str, int], dict[int, set]]:
    meta = _MODEL_META.get(cls)
    if meta is None:
        names = tuple(cls.model_fields)
        meta = _MODEL_META[cls] = (names, {n: 1 << i for i, n in enumerate(names)}, {})
    return meta


def revive_model(cls: type[BaseModel], values: tuple, mask: int) -> BaseModel:
    """Rebuild a pydantic model pickled by :func:`reduce_model` (no validation: these values
    were a valid instance's)."""
    names, _, sets = _MODEL_META.get(cls) or _model_meta(cls)
    fields_set = sets.get(mask)
    if fields_set is None:  # shared by the instances with the same fields set, never mutated
        fields_set = sets[mask] = {n for i, n in enumerate(names) if mask >> i & 1}
    obj = object.__new__(cls)
    _set_dict(obj, dict(zip(names, values, strict=True)))
    _set_fields_set(obj, fields_set)
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


def reduce_model(self: BaseModel) -> tuple:
    """``__reduce__`` for pydantic models (see the module docstring)."""
    cls = type(self)
    d = self.__dict__
    names, bits, _ = _MODEL_META.get(cls) or _model_meta(cls)
    if (
        self.__pydantic_extra__ is not None
        or self.__pydantic_private__ is not None
        or len(d) != len(names)
    ):  # not the plain case: the default way
        return (_NEWOBJ, (cls,), self.__getstate__())
    mask = 0
    for name in self.__pydantic_fields_set__:
        mask |= bits[name]
    return (revive_model, (cls, tuple(map(d.__getitem__, names)), mask))
