"""Built-in network functions, one per module (installed as snf.functions)."""
