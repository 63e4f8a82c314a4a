"""What comes out of a pipeline.

sink        reads the terminal topics until every end marker of a run is in
collector   dedups by packet id, orders by id, writes pcapng and JSON Lines
spool       packets on disk in sorted runs, merged by id (the collector's memory bound)
seen        packet ids seen, as bitmaps: exact, or a bounded window
stream      what a following sink writes as it reads, in bounded memory
wholes      whole copies of packets by id, to join heads with their tails
transmit    live: egress packets out of one interface, or out of the other arm
latency     live: capture-to-transmit times, as a bounded histogram
"""
