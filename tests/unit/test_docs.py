"""The README's action reference is the one generated from the action table."""
from pathlib import Path

from imapd_ctl.transports import docs

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_embeds_the_generated_action_reference():
    assert docs.markdown() in README.read_text(), "regenerate with: python -m imapd_ctl.transports.docs"
