"""What comes out of a pipeline.

sink        reads the terminal topics until every end marker of a run is in
collector   dedups by packet id, orders by id, writes pcapng and JSON Lines
wholes      whole copies of packets by id, to join heads with their tails
"""
