"""Every call of kafka-python, and the local broker snf starts itself.

admin          admin clients that always close, probes, topics, group members
lag            consumer-group lag of a function's input
producer       TopicProducer: ordered, acknowledged sends to one topic
topic_reader   every partition of some topics from the beginning (the sink)
side_reader    a worker's direct reads and offset lookups
dead_letter_reader  a dead-letter topic read whole, and put back (`snf dlq`)
cluster        `snf kafka up/down`: a KRaft cluster on loopback from Maven jars
kraft_config   what such a cluster is: nodes, server.properties, its record
secure_cluster a `--secure` cluster's CA, certificates, SCRAM users, client config
acls           who may do what on it: ACLs as data, created by an admin
security       TLS and SASL settings of every client (--kafka-config, SNF_KAFKA_*)
login_probe    why a secured broker refused us: one TLS + SASL login by hand
settings       SNF_HOME and SNF_BROKERS
errors         BrokerError and PublishError
"""
