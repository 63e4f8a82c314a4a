"""One function as a Kafka worker: a Faust app, and the protocol per record in parts.

app             the Faust wiring: app, topics, table, agent, timers (the only Faust imports)
processor       Processor: one input record, from decode to journal, state and outputs
partition       PartitionState: per input partition, settled point and watermarks
commit          Committer: checkpoints and offset commits up to a settled point
catch_up        CatchUp: records Faust's fetcher skipped or withholds, read directly
lifecycle       drain on SIGTERM, fencing after a long stop, assignment records
table_store     FaustTableStore: a core table inside the function's single Faust table
faust_compat    every use of a private Faust or aiokafka API, behind a version check
files           the worker's datadir files (assignment.json, stats.json, clean-stop)
health          /livez and /readyz for container probes
"""
