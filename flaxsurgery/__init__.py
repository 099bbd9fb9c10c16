"""flaxsurgery: neural-network surgery for JAX/Flax.

Change a trained network's architecture (inputs, actions, hidden units, layers, conv channels)
and keep what it learned: unit IDs pair old and new units, a host-side plan turns the pairing
into index arrays, and :func:`transplant` applies it as pure, jit- and vmap-able gathers.
"""

from flaxsurgery.init import Rule
from flaxsurgery.init import copy
from flaxsurgery.init import fresh
from flaxsurgery.init import fresh_in_zero_out
from flaxsurgery.init import mean
from flaxsurgery.init import split
from flaxsurgery.init import zeros
from flaxsurgery.layout import Flat
from flaxsurgery.layout import chain_layout
from flaxsurgery.spec import Plan
from flaxsurgery.spec import plan
from flaxsurgery.transplant import transplant
from flaxsurgery.transplant import transplant_state
from flaxsurgery.verify import VerifyReport
from flaxsurgery.verify import map_units
from flaxsurgery.verify import verify

__all__ = (
    "Flat",
    "Plan",
    "Rule",
    "VerifyReport",
    "chain_layout",
    "copy",
    "fresh",
    "fresh_in_zero_out",
    "map_units",
    "mean",
    "plan",
    "split",
    "transplant",
    "transplant_state",
    "verify",
    "zeros",
)
