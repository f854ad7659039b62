#!/usr/bin/python3
"""imapd-ctl, installed by the Debian package (Debian's python3 and its python3-* modules)."""
import sys

from imapd_ctl.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
