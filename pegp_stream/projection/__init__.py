"""PEGP projection: feature statistics, basis growth and the gradient/update projection."""

from .basis import grow_basis, subspace_agreement, top_eigenpairs
from .project import leakage, project_out
from .space import ProtectedSpace

__all__ = ["ProtectedSpace", "grow_basis", "leakage", "project_out", "subspace_agreement", "top_eigenpairs"]
