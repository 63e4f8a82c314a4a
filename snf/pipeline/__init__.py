"""Pipeline files and what they derive: the model, the wiring graph, routing, names.

spec        the file's pydantic models (what a user writes)
loader      load and validate a file: every problem at once, with file:line
errors      how a problem is located in the YAML and worded
model       Pipeline and PipelineFunction: validated, with derived topics and routes
graph       the wiring graph (chains, fan-out, fan-in, terminals)
routing     how packets enter each stage: hops, StageRouters, deliveries
names       every Kafka name, derived from pipeline and function names
schema      the JSON Schema of pipeline files
"""
