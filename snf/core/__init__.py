"""The function contract and what runs a core, shell-agnostic (no Faust, no Kafka).

contract    NetworkFunction, its Config base, Decisions, the partitioning key kinds
reasons     declared drop reasons, and the one helper for numbered ones (rule:N)
tables      the state interface: Store, MemoryStore, TableView, BatchState
engine      FunctionEngine: parse, run the core, write state back, count, split by port
registry    function type name -> class (built-ins and the entry-point group)
"""
