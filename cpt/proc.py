"""TEMPORARY: the old name of the /proc layer, kept only for ve/lifecycle.py, which another
branch is restructuring.  Remove this module at the merge, once ve/ imports cpt.procfs."""

from cpt.procfs import Proc

__all__ = ["Proc"]
