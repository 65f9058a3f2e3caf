"""Makes docs/screenshot.png (1280x800). Run on purpose: `UPDATE_SCREENSHOT=1 pytest tests/browser -m browser -k screenshot`."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from tests.browser.conftest import ChatPage

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]

QUESTION = "How do I read a large file line by line in Python without loading it all into memory?"
ANSWER = """Iterate over the file object: it yields **one line at a time** and buffers the reads for you.

```python
def count_errors(path):
    with open(path, encoding="utf-8") as f:
        return sum("ERROR" in line for line in f)
```

- Pass `encoding=` explicitly, so the result does not depend on the platform.
- For binary data, open with `"rb"` and read fixed-size chunks instead."""
FOLLOW_UP = "Perfect, thanks! Can it also report the line numbers?"
SECOND_ANSWER = """Yes: wrap the file in `enumerate(f, start=1)` and collect the numbers of the matching lines, e.g. `[n for n, line in enumerate(f, 1) if "ERROR" in line]`."""


@pytest.mark.skipif(not os.environ.get("UPDATE_SCREENSHOT"), reason="writes docs/screenshot.png; set UPDATE_SCREENSHOT=1")
def test_screenshot(chat_page, live) -> None:  # type: ignore[no-untyped-def]
    from django.utils import timezone

    from chat.models import Agent, Message, Reaction
    from sessions_app.models import ChatSession

    user = live.user
    now = timezone.now()
    for i, title in enumerate(["Trip ideas for the weekend", "SQL index for the orders table", "Release notes draft"]):
        older = ChatSession.objects.create(owner=user, title=title)
        ChatSession.objects.filter(pk=older.pk).update(updated_at=now - timedelta(hours=3 + 20 * i))
    session = ChatSession.objects.create(owner=user, title="Reading large files in Python")
    coder = Agent.objects.filter(slug="coder").first()
    rows = [
        ("user", QUESTION, None, -4),
        ("assistant", ANSWER, coder, -3),
        ("user", FOLLOW_UP, None, -2),
        ("assistant", SECOND_ANSWER, coder, -1),
    ]
    messages = []
    for seq, (role, content, agent, minutes) in enumerate(rows, start=1):
        message = Message.objects.create(
            session=session, seq=seq, role=role, content=content, status="complete", agent=agent,
            reply_to=messages[-1] if role == "assistant" else None,
        )
        Message.objects.filter(pk=message.pk).update(created_at=now + timedelta(minutes=minutes))
        messages.append(message)
    Reaction.objects.create(message=messages[1], user=user, emoji="👍")
    ChatSession.objects.filter(pk=session.pk).update(seq=len(rows), message_count=len(rows), updated_at=now)

    chat: ChatPage = chat_page().login()
    chat.open(str(session.pk))
    chat.page.locator('#messages article.msg[data-status="complete"]').nth(3).wait_for()
    chat.page.mouse.move(0, 0)
    chat.page.wait_for_timeout(300)
    target = ROOT / "docs" / "screenshot.png"
    target.parent.mkdir(exist_ok=True)
    chat.page.screenshot(path=str(target))
    assert target.stat().st_size > 10_000
