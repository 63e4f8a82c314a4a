"""BPF: tcpdump filter expressions compiled by libpcap and attached to a socket.

libpcap is only the compiler here (`pcap_open_dead` + `pcap_compile`, through
ctypes): the kernel runs the program on every packet before it reaches the
ring, so filtered-out packets cost no copy and no Python. The program's
accept value is the snaplen, which is how the kernel truncates (`tp_snaplen`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import socket
import struct

from snf.errors import ConfigError, SnfError

__all__ = ["DLT_EN10MB", "DLT_RAW", "Program", "attach", "compile_filter", "snaplen_only"]

DLT_EN10MB = 1  # libpcap's DLT_* (not the LINKTYPE_* of files): Ethernet
DLT_RAW = 12  # raw IP, on Linux
SO_ATTACH_FILTER = 26
BPF_RET_K = 0x06  # BPF_RET | BPF_K: accept this many bytes of the packet
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
# The soname first: find_library needs ldconfig or a compiler, which an image may lack.
LIBRARY_NAMES = ("libpcap.so.0.8", "libpcap.so.1", "libpcap.so")

Program = list[tuple[int, int, int, int]]  # (code, jt, jf, k) per instruction


class _Insn(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_Insn))]


@functools.cache
def _libpcap() -> ctypes.CDLL:
    found = ctypes.util.find_library("pcap")
    for name in (*LIBRARY_NAMES, *([found] if found else [])):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_compile.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(_BpfProgram),
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint32,
        ]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        return lib
    raise SnfError("a BPF filter needs libpcap, which is not installed (apt: libpcap0.8)")


def compile_filter(expression: str, snaplen: int, dlt: int = DLT_EN10MB) -> Program:
    """The optimised program for a tcpdump expression; ConfigError with libpcap's
    message when it does not compile."""
    lib = _libpcap()
    handle = lib.pcap_open_dead(dlt, snaplen)
    if not handle:
        raise SnfError("libpcap: pcap_open_dead failed")
    program = _BpfProgram()
    try:
        if lib.pcap_compile(handle, program, expression.encode(), 1, PCAP_NETMASK_UNKNOWN) < 0:
            reason = (lib.pcap_geterr(handle) or b"").decode(errors="replace")
            raise ConfigError(f"bpf {expression!r}: {reason}")
        insns = program.bf_insns[: program.bf_len]
        result = [(i.code, i.jt, i.jf, i.k) for i in insns]
        lib.pcap_freecode(program)
        return result
    finally:
        lib.pcap_close(handle)


def snaplen_only(snaplen: int) -> Program:
    """Accept every packet, truncated to snaplen: no libpcap needed."""
    return [(BPF_RET_K, 0, 0, snaplen)]


def attach(sock: socket.socket, program: Program) -> None:
    """SO_ATTACH_FILTER: a `struct sock_fprog` pointing at the instructions."""
    insns = (_Insn * len(program))(*(_Insn(*i) for i in program))
    fprog = struct.pack("HP", len(program), ctypes.addressof(insns))  # native: padded to 16
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
