"""The function contract and what runs a core, shell-agnostic (no Faust, no Kafka).

contract    NetworkFunction, its Config base, Decisions, the partitioning key kinds,
            triage() (the prelude of every core: non-IP and malformed packets)
reasons     declared drop reasons, and the one helper for numbered ones (rule:N)
cidr        CIDR specs of function configs, parsed once into ints
tables      the state interface: Store, MemoryStore, TableView, BatchState
engine      FunctionEngine: parse, run the core, write state back, count, split by port
expiry      ExpiryIndex: when each entry of a table expires, for sweeps and eviction
registry    function type name -> class (built-ins and the entry-point group)
limits      bounds on configuration: durations (Seconds), files it names (read_text_file)
"""
