"""Transmitter: frames out of an interface as they are, through an AF_PACKET socket.

One `send` call per frame: Python has no sendmmsg, and at the rates the
bench measured (bench/live_capture.py) the call is not the bottleneck, so
no TPACKET tx ring. Errors are counted, never raised per frame: one lost
frame must not stop an egress.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable

from snf.live.afpacket import link_info, packet_socket

__all__ = ["VLAN_TPIDS", "Transmitter"]

log = logging.getLogger(__name__)
VLAN_TPIDS = (b"\x81\x00", b"\x88\xa8")  # 802.1Q, 802.1ad: 4 more bytes of header


class Transmitter:
    """Sends whole link-layer frames on one interface; counts what it could not."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self.sent = self.failed = self.too_big = 0
        self._sock = packet_socket(interface, "transmit on")
        try:
            info = link_info(self._sock, interface)
        except BaseException:
            self._sock.close()
            raise
        self.max_frame = info.mtu + info.header  # + 4 for a tagged Ethernet frame
        self._tagged_max = self.max_frame + 4 if info.header else self.max_frame
        self._logged: set[int] = set()

    def send(self, frames: Iterable[bytes]) -> None:
        """Each frame as is; over the MTU counts too_big, an error counts failed."""
        send, limit, tagged_max = self._sock.send, self.max_frame, self._tagged_max
        sent = 0
        for frame in frames:
            if len(frame) > limit and (len(frame) > tagged_max or frame[12:14] not in VLAN_TPIDS):
                self.too_big += 1
                continue
            try:
                send(frame)
            except OSError as exc:
                self._failed(exc)
            else:
                sent += 1
        self.sent += sent

    def _failed(self, exc: OSError) -> None:
        self.failed += 1
        if exc.errno not in self._logged:  # once per kind: ENOBUFS can come a million times
            self._logged.add(exc.errno or 0)
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            log.warning(
                "transmit on %s: %s (%s); counting, not logging, more",
                self.interface,
                exc.strerror,
                name,
            )

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Transmitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
