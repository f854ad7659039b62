"""Write docs/api.md, the API reference made from the action table (transports.reference):
    .venv/bin/python -m tools.apiref          (tests/unit/test_docs.py keeps it in step)"""
from __future__ import annotations

import sys
from pathlib import Path

from imapd_ctl.transports import reference

TARGET = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def main() -> int:
    TARGET.write_text(reference.markdown(), encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
