"""Whole runs with a verdict.

oneshot   `snf run`: options, results, the --local run, the summary
kafka_run `snf run` over Kafka: broker, topics, workers, replay, sink, teardown
run_options  what a run takes and gives: RunOptions, RunResult, RunError
chaos     `snf chaos`: a run with faults injected mid-stream
verdict   a run's output judged against the --local reference
esp_audit the ESP packets of a topic: no (SPI, sequence number) twice, none going back
inline_rig  a deployed pipeline inline in a lab's traffic: deploy, capture, sink, teardown
"""
