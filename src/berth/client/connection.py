"""http.client over the daemon's socket: imported only by the calls that use it, since
http.client (with ``email``) costs a CLI run about 10 ms."""

from __future__ import annotations

import http.client

from berth.client.transport import Address, open_socket


class Connection(http.client.HTTPConnection):
    """http.client over the daemon's unix socket (or TCP), with Berth's connect errors."""

    def __init__(self, address: Address, timeout: float | None = None) -> None:
        super().__init__(address.http_host, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = open_socket(self.address, self.timeout)
