"""The README's action reference is the one generated from the action table."""
from pathlib import Path

from imapd_ctl import docs

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_embeds_the_generated_action_reference():
    assert docs.markdown() in README.read_text(), "regenerate with: python -m imapd_ctl.docs"
