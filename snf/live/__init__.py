"""Live packet I/O: frames from and to interfaces, and the lab to try it in.

afpacket      RingCapture: an AF_PACKET TPACKET_V3 ring, a CaptureChunk per read
bpf           tcpdump filter expressions compiled by libpcap, attached to a socket
transmit      Transmitter: frames out of an interface, errors counted
arms          which interface a live packet came in by, in its source id
lab           `snf lab`: two network namespaces wired to the host
lab_servers   the lab's HTTP and iperf3 servers
"""
