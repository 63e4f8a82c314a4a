"""Whole runs with a verdict.

oneshot   `snf run`: broker, topics, workers, replay, sink, results, teardown
chaos     `snf chaos`: a run with faults injected mid-stream
verdict   a run's output judged against the --local reference
"""
