"""Every call of kafka-python, and the local broker snf starts itself.

admin          admin clients that always close, probes, topics, group members
lag            consumer-group lag of a function's input
producer       TopicProducer: ordered, acknowledged sends to one topic
topic_reader   every partition of some topics from the beginning (the sink)
side_reader    a worker's direct reads and offset lookups
cluster        `snf kafka up/down`: a KRaft cluster on loopback from Maven jars
kraft_config   what such a cluster is: nodes, server.properties, its record
settings       SNF_HOME and SNF_BROKERS
errors         BrokerError and PublishError
"""
