"""The capture agent: captures in, batches per partition out to the ingress topic.

replay        read captures, pace them as tcpreplay does, publish
pacing        when each packet goes: tcpreplay's -x/-p/-M/-t, --duration, --loopdelay-ms
unique_ip     --unique-ip: every loop's addresses shifted, checksums kept valid
accumulator   route packets to partitions and cut batches
publisher     one Kafka message per batch, with the session's lineage
checkpoint    what Kafka acknowledged, so a killed replay can --resume
live          capture from interfaces (snf.live's rings), batch, publish
"""
