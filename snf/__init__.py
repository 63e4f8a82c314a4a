"""snf: network functions as serverless stream functions on Apache Kafka."""

__version__ = "0.1.0"
