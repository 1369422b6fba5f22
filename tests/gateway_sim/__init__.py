"""The gateway's operating system, as far as a test can have it without changing this machine.

* :mod:`.machine`: a scratch copy of this machine (copy-on-write overlays in a private mount
  namespace) where the real dpkg installs, upgrades, removes and purges the package;
* :mod:`.service` and :mod:`.systemctl`: systemd's part, starting a unit's ExecStart with its user,
  environment, file-system limits (bwrap) and seccomp filters (:mod:`.seccomp`), waiting for
  READY=1, stopping it; maintainer scripts reach it through ``systemctl``;
* :mod:`.unit`: a unit file read as systemd reads it;
* :mod:`.package`: the packages under test (this checkout, and "the next release");
* :mod:`.installed`: the installed agent's config, status and outbox, seen from the test.
"""
