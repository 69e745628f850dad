"""Driving the studio as a student does, shared by the studio's test files."""

import html


def click(app):
    """Click Generate and wait for the run: the images it made."""
    app.generate_button.click()
    return app.wait(timeout=120)


def status(app):
    """The status line as the student reads it (HTML entities decoded)."""
    return html.unescape(app.status.value)
