"""Packets, and nothing of Kafka: batches, parsed headers, flow keys, rewrites, files.

batch            PacketBatch: packet bytes plus one fixed-width row per packet
headers          Headers: the parsed fields of a batch, as parallel lists
linktypes        the pcap link types snf understands
scalar           the per-packet parser at fixed offsets (every link type)
vectorised       the numpy parser of plain Ethernet/IPv4/TCP/UDP batches
parse            parse_batch: picks one of the two; identical results
flowkey          canonical flow keys, flow and endpoint hashes
fragments        the router that keeps IP fragments with their first fragment
rewrite          in-place header rewrites with incremental checksums
bulk_rewrite     a batch's address/port rewrites noted, then written at once
heads            packets cut after their L4 header, for hops that need no payload
capture_file     reading pcap and pcapng files, a chunk of arrays at a time
capture_chunk    CaptureChunk: packets as columns over the file's bytes
pcapng_writer    writing pcapng files that Wireshark opens
"""
