"""Frames the agent sends to a data logger: answers (9011/9013/9014) and the clock setting (1012).

An answer carries the QN of the frame it answers (that is how the logger pairs them), the
station's MN and PW, Flag=4 (HJ 212-2017, no answer wanted) and ST 91 ("system interaction",
as the standard's examples of 9011/9014 do; ``answer_st: station`` echoes the station's own
ST for centres that expect that). A 2005-style frame (Flag version 0) is answered the 2005 way:
no QN field, Flag=0, and the answered QN and CN inside CP.
"""

from __future__ import annotations

from datetime import datetime

from firmware_bridges.hj212.frame import build_frame

ANSWER_FLAG_2017 = 4      # version bits 000001, D = 0, A = 0


def local_qn(zone, now: datetime | None = None) -> str:
    """A fresh QN (YYYYMMDDhhmmsszzz) in the station's local time."""
    moment = now or datetime.now(zone)
    return moment.strftime("%Y%m%d%H%M%S") + f"{moment.microsecond // 1000:03d}"


def answer(cn: str, cp: str, *, qn: str, st: str, pw: str, mn: str, version: int,
           answered_cn: str | None = None) -> bytes:
    """An answer frame (cn 9011, 9013 or 9014) with CP content ``cp``."""
    if version == 0:
        inner = f"QN={qn};CN={answered_cn}" if answered_cn else f"QN={qn}"
        cp = f"{inner};{cp}" if cp else inner
        return build_frame(f"ST={st};CN={cn};PW={pw};MN={mn};Flag=0;CP=&&{cp}&&")
    return build_frame(f"QN={qn};ST={st};CN={cn};PW={pw};MN={mn};Flag={ANSWER_FLAG_2017};CP=&&{cp}&&")


def request_answer(qnrtn: int, **fields) -> bytes:
    """9011: the request was accepted (QnRtn=1) or refused with a reason (2..9, 100)."""
    return answer("9011", f"QnRtn={qnrtn}", **fields)


def data_answer(**fields) -> bytes:
    """9014: the upload was received."""
    return answer("9014", "", **fields)


def notice_answer(**fields) -> bytes:
    """9013: the notification was received."""
    return answer("9013", "", **fields)


def set_time(*, qn: str, st: str, pw: str, mn: str, system_time: str) -> bytes:
    """1012 with an answer requested (Flag=5): set the logger's clock to ``system_time``
    (YYYYMMDDhhmmss, station local time)."""
    return build_frame(f"QN={qn};ST={st};CN=1012;PW={pw};MN={mn};Flag=5;CP=&&SystemTime={system_time}&&")
