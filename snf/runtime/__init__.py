"""The shells that run function cores.

local     the whole pipeline in one process with in-memory state (--local, the reference)
worker/   one function as a Kafka worker (Faust), the protocol in named parts
"""
