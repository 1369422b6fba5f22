"""The bridges' transport kit: bytes from devices to a family's framer and session, and answers
back, over TCP (listening or dialling), UDP or a serial port, with the limits every bridge needs.

A family writes its framer, its session and its options (see :mod:`.contract`); a runner of it
picks a transport and hands it a :class:`~.contract.Bridge` (itself)::

    server = TcpServer(host, port, bridge, limits=Limits(idle_timeout=600), stats=my_stats)
    await server.run()          # until cancelled: bind (with backoff), serve, sweep timeouts

Modules, one job each:

- :mod:`.contract`     what a family gives (Framer, Session, Bridge) and gets (Link)
- :mod:`.limits`       the limits (idle, frame/slow-loris, flood, write, connections) and counters
- :mod:`.link`         one peer: read -> framer -> session under the bridge's boundary; its timers
- :mod:`.replies`      answers in order; an acknowledgement only after the sink's commit
- :mod:`.retry`        bind / open / connect until it works, with the one backoff
- :mod:`.tcp`          a TCP connection as a link (shared by server and dialler)
- :mod:`.tcp_listen`   :class:`TcpServer`: one host:port, many peers, max_connections
- :mod:`.tcp_dial`     :class:`TcpDialer`: connect out, reconnect with backoff
- :mod:`.udp`          :class:`UdpPort`: a local port, peers by address, frames per datagram
- :mod:`.serial_port`  :class:`SerialTransport`: pyserial, read on the loop, reopen with backoff
- :mod:`.serial_line`  :class:`SerialLine`: the one serial-line options model

What every link gets (each bounded per link, so one peer cannot hurt the others):

- a peer silent for ``idle_timeout`` is closed (TCP);
- a frame must complete within ``frame_timeout`` of its first byte: a slow-loris peer is closed
  (TCP), a serial line's stalled frame thrown away;
- the framer's buffer is the family's to bound (about one maximal frame); a peer that sends
  ``flood_limit`` bytes without a valid frame is closed (TCP);
- at most ``max_connections`` per server: the oldest connection without a valid frame makes room,
  else the newcomer is turned away;
- a peer that does not read our answers (``write_limit`` unsent) is closed;
- an answer sent with ``after_commit=True`` goes out only once the sink has committed what came
  before it, and answers keep their order;
- a bug in the framer or the session costs that read (counted on the bridge's boundary), never
  the link, the transport or the event loop.

Timers (timeouts, backoff waits) run on an injected :class:`~agent.core.clock.Clock`, so tests
can move them with a ``VirtualClock``; sockets and ports stay real.
"""

from agent.core.transport.contract import Bridge, BufferedFramer, Framer, Link, Session
from agent.core.transport.limits import Limits, TransportStats
from agent.core.transport.replies import Replies
from agent.core.transport.serial_line import SerialLine
from agent.core.transport.serial_port import SerialTransport
from agent.core.transport.tcp_dial import TcpDialer
from agent.core.transport.tcp_listen import TcpServer
from agent.core.transport.udp import UdpPort

__all__ = ["Bridge", "BufferedFramer", "Framer", "Limits", "Link", "Replies", "SerialLine", "SerialTransport", "Session",
           "TcpDialer", "TcpServer", "TransportStats", "UdpPort"]
