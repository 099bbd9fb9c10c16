"""flaxsurgery: neural-network surgery for JAX/Flax.

Change a trained network's architecture (inputs, actions, hidden units, layers, conv channels)
and keep what it learned: unit IDs pair old and new units, a host-side plan turns the pairing
into index arrays, and [`transplant`][flaxsurgery.transplant.transplant] applies it as pure, jit- and vmap-able gathers.
"""

from flaxsurgery.agents import Surgery, surgery, transplant_normalizer
from flaxsurgery.buffers import BufferSurgery, transplant_buffer
from flaxsurgery.layout import (
    ACTIVATIONS,
    MIXING,
    OUTPUTS,
    WINDOW,
    Concat,
    Flat,
    Grid,
    chain_layout,
)
from flaxsurgery.planner import plan
from flaxsurgery.plans import Plan
from flaxsurgery.rules import (
    Rule,
    copy_of,
    fresh,
    fresh_in_zero_out,
    mean,
    register_rule,
    split,
    zeros,
)
from flaxsurgery.spec import Spec
from flaxsurgery.state import register_state_field, state_field_kinds, transplant_state
from flaxsurgery.trace import (
    register_elementwise,
    register_primitive,
    trace_layout,
    unregister_primitive,
)
from flaxsurgery.transplant import transplant
from flaxsurgery.units import Fill, SurgeryError
from flaxsurgery.verify import ROUNDING, VerifyReport, map_units, verify

__all__ = (
    "ACTIVATIONS",
    "MIXING",
    "OUTPUTS",
    "ROUNDING",
    "WINDOW",
    "BufferSurgery",
    "Concat",
    "Fill",
    "Flat",
    "Grid",
    "Plan",
    "Rule",
    "Spec",
    "Surgery",
    "SurgeryError",
    "VerifyReport",
    "chain_layout",
    "copy_of",
    "fresh",
    "fresh_in_zero_out",
    "map_units",
    "mean",
    "plan",
    "register_elementwise",
    "register_primitive",
    "register_rule",
    "register_state_field",
    "split",
    "state_field_kinds",
    "surgery",
    "trace_layout",
    "transplant",
    "transplant_buffer",
    "transplant_normalizer",
    "transplant_state",
    "unregister_primitive",
    "verify",
    "zeros",
)
