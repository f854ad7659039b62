#!/usr/bin/python3
"""imapd-ctl, installed by the RPM (the distribution's python3 and its python3-* modules). The
Debian package's /usr/bin/imapd-ctl is the same entry point, written by pybuild from
pyproject.toml's [project.scripts]."""
import sys

from imapd_ctl.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
