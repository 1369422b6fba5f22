"""GB/T 20999-2017 (交通信号控制机与上位机间的数据通信协议): the Chinese signal-controller protocol,
the third path of the signal-controller bridge (``protocol: gbt20999``).

Modules, one job each:

- :mod:`.codec`    frame layout, CRC, escaping, build, strict parse, datagram and stream framers
- :mod:`.objects`  the objects read and set (class.object.attribute.element) and their values
- :mod:`.decode`   `edge-agent decode gbt20999 HEX` for technicians
- :mod:`.client`   requests and answers over the transport kit (UDP, TCP, RS-232): matching, heartbeats, traps
- :mod:`.link`     the runner's link: polls state into phase colours, holds a stage and restores the
                   controller's own run mode and plan
- :mod:`.hold_record` the durable record of a hold, so a run killed during it is undone by the next
"""
