"""Facts about jaxprs that the tracer and the activation finder both need, outside either so that
neither imports the other."""

# Primitives that call a sub-jaxpr with the equation's operands, returning its outputs: the
# equation's parameter that holds the sub-jaxpr.
CALLS = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
         "remat": "jaxpr", "remat2": "jaxpr", "checkpoint": "jaxpr",
         "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
         "custom_vjp_call_jaxpr": "fun_jaxpr"}
