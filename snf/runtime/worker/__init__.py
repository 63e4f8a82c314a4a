"""One function as a Kafka worker: a Faust app, and the protocol per record in parts.

app             the Faust wiring: app, topics, table, agent, timers, signals
processor       Processor: one input record, from decode to journal, state and outputs
admission       what of an input record may be trusted: decode, lineage, control data
dead_letters    DeadLetter and the headers of a record sent to the function's DLQ
attempts        the offset each partition is on, in a file: poison records that crash
outputs         one event's output messages, each stamped with its lineage
partition       PartitionState: per input partition, settled point and watermarks
state_table     each core table as a prefix of the function's single state table
faust_table     that single table over Faust's (RocksDB, changelog)
catch_up        CatchUp: records Faust's fetcher skipped or withholds, read directly
commit          Committer: checkpoints and offset commits up to a settled point
lifecycle       start from a trusted datadir, drain on SIGTERM, fence, assignments
coordination    the lock and flags the agent, timers and signal handlers share
faust_compat    every use of a private Faust or aiokafka API, behind a version check
files           the worker's datadir files (assignment.json, stats.json, clean-stop)
health          /livez and /readyz for container probes, /metrics for Prometheus
metrics         WorkerMetrics: the worker's own Prometheus registry and what feeds it
"""
