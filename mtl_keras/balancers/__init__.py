"""Task balancing methods, one per module, and their registry.

Loss balancers weight the task losses before one backward pass; gradient
balancers weight tasks from the Gramian of their gradients. See
`mtl_keras.balancers.base` for the two contracts.
"""

from mtl_keras.balancers.aligned_mtl import AlignedMTL
from mtl_keras.balancers.base import (
    Balancer,
    GradientBalancer,
    GramianBalancer,
    JacobianBalancer,
    LossBalancer,
)
from mtl_keras.balancers.cagrad import CAGrad
from mtl_keras.balancers.db_mtl import DBMTL
from mtl_keras.balancers.dualproj import DualProj
from mtl_keras.balancers.famo import FAMO
from mtl_keras.balancers.gls import GeometricLossStrategy
from mtl_keras.balancers.graddrop import GradDrop
from mtl_keras.balancers.gradnorm import GradNorm
from mtl_keras.balancers.gradvac import GradVac
from mtl_keras.balancers.imtl_g import IMTLG
from mtl_keras.balancers.imtl_l import IMTLL
from mtl_keras.balancers.mgda import MGDA
from mtl_keras.balancers.nash_mtl import NashMTL
from mtl_keras.balancers.pcgrad import PCGrad
from mtl_keras.balancers.registry import (
    available,
    get,
    normalise_name,
    register,
    registered,
    serialize,
)
from mtl_keras.balancers.rlw import RandomLossWeighting
from mtl_keras.balancers.si import ScaleInvariant
from mtl_keras.balancers.static import Static
from mtl_keras.balancers.uncertainty import UncertaintyWeighting
from mtl_keras.balancers.upgrad import UPGrad

__all__ = [
    "AlignedMTL",
    "Balancer",
    "CAGrad",
    "DBMTL",
    "DualProj",
    "FAMO",
    "GeometricLossStrategy",
    "GradDrop",
    "GradNorm",
    "GradVac",
    "GradientBalancer",
    "GramianBalancer",
    "IMTLG",
    "IMTLL",
    "JacobianBalancer",
    "LossBalancer",
    "MGDA",
    "NashMTL",
    "PCGrad",
    "RandomLossWeighting",
    "ScaleInvariant",
    "Static",
    "UPGrad",
    "UncertaintyWeighting",
    "available",
    "get",
    "normalise_name",
    "register",
    "registered",
    "serialize",
]
