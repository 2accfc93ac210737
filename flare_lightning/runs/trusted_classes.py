"""Which classes may be built from a run folder or a checkpoint: this project's own (of the
expected kind), or classes the caller names explicitly. Anything else is refused before its
module is imported, so a crafted ``config.yaml`` or checkpoint cannot run code."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

PROJECT_PACKAGES = ("flare_lightning", "datamodules")


def class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def trusted_class(class_path: object, base: type, where: str, allowed: Sequence[type] = ()) -> type:
    """The class ``class_path`` names, if it is one of ``allowed`` (or a subclass of one) or a
    subclass of ``base`` defined in this project's packages; else a ``ValueError`` naming
    ``where`` and saying what was expected.

    Args:
        class_path: ``module.Class``, as a config's ``class_path`` holds it.
        base: the kind of class expected (e.g. ``LightningDataModule``).
        where: the file and key holding the ``class_path``, for the error (``config.yaml: data``).
        allowed: classes the caller trusts besides the project's own.
    """
    module, _, name = str(class_path).rpartition(".")
    trusted_modules = {c.__module__ for c in allowed} | set(PROJECT_PACKAGES)
    refusal = (f"{where}.class_path {class_path!r} is not built: only {base.__name__} subclasses of this "
               f"project ({', '.join(p + '.*' for p in PROJECT_PACKAGES)})"
               + (f" or {', '.join(class_name(c) for c in allowed)}" if allowed else "")
               + " are rebuilt from a run folder or checkpoint (pass your own class explicitly to allow it)")
    if not isinstance(class_path, str) or not module or not (
        module in trusted_modules or module.split(".")[0] in PROJECT_PACKAGES
    ):
        raise ValueError(refusal)
    cls = getattr(importlib.import_module(module), name, None)
    ok = isinstance(cls, type) and (issubclass(cls, tuple(allowed)) if allowed else False)
    ok = ok or (isinstance(cls, type) and issubclass(cls, base) and cls.__module__.split(".")[0] in PROJECT_PACKAGES)
    if not ok:
        raise ValueError(refusal)
    return cls


def _loaded_class(class_path: str) -> type | None:
    """The class at ``class_path`` if its module is loaded already or belongs to this project
    (imported then), else None: an unknown module is never imported."""
    module, _, name = class_path.rpartition(".")
    if module not in sys.modules and module.split(".")[0] not in PROJECT_PACKAGES:
        return None
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    return cls if isinstance(cls, type) else None


def related_classes(a: str, b: str) -> bool:
    """Whether two class paths name the same class or one derives from the other."""
    if a == b:
        return True
    ca, cb = _loaded_class(a), _loaded_class(b)
    return ca is not None and cb is not None and (issubclass(ca, cb) or issubclass(cb, ca))
