"""Built-in network functions, one package each (installed as snf.functions).

A function's package holds its class, config model and documentation in
`__init__`; its helpers are sibling modules, which never import the package
itself nor another function's. Functions import only snf.core, snf.packet
and snf.errors (plus third-party libraries).
"""
