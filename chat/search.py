"""Full-text search over a user's own messages, across their sessions: ranked, paginated, with a snippet.

One interface, two engines, each the database's own:

- PostgreSQL: a GIN index on `to_tsvector('simple', ...)` of the text (chat.0008), matched with
  `to_tsquery`, ranked by `ts_rank`, the snippet from `ts_headline`.
- SQLite: an FTS5 table over the messages' text (external content, kept by triggers), matched
  with MATCH, ranked by bm25, the snippet from `snippet()`.

Both index the text of finished messages only (type `text`, not `streaming`): the checkpoint that
saves a streaming reply's text every second changes no index, and a reply is found once it
ended. The 'simple' configuration and the unicode61 tokenizer split on anything that is not a
letter or digit and fold case, with no stemming, so both engines find the same words in any
language; each word of the query matches as a prefix ("stream" finds "streaming"), and every
word must be there. The newest CANDIDATES matches are ranked (bm25 on SQLite, ts_rank on
PostgreSQL) and the best of them come first, so a word that is in most messages costs about what
a rare one costs. A query is reduced to its words before it reaches either engine, so no
query syntax of theirs can be injected.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db import connection

from chat.dbvalues import to_datetime, to_uuid
from chat.exceptions import InvalidInput
from chat.models import Message
from sessions_app.models import ChatSession

MAX_WORDS = 10
MAX_WORD_CHARS = 64
MAX_QUERY_CHARS = 500
MAX_OFFSET = 1000  # ranked results are read to this depth at most
# A search ranks the user's newest CANDIDATES matches: a word found in most of a million messages
# costs no more to rank than a rare one (bench/search.py). Results go as deep as MAX_OFFSET + a page.
CANDIDATES = 2000
# The indexed expression on PostgreSQL, exactly as chat.0008 creates the index (punctuation that
# PostgreSQL's parser would keep inside a token, as in example.com or 3.14, becomes spaces).
SEARCH_VECTOR = "to_tsvector('simple', translate({content}, '.@/:_+~#?=&\\|', '             '))"
SNIPPET_WORDS = 16
# Marks around matches in the engines' snippets: characters of Unicode's private use area (chat text
# has no business holding them; one that does shows as a stray highlight, never as markup).
_OPEN, _CLOSE = "\ue000", "\ue001"
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Hit:
    message_id: uuid.UUID
    session_id: uuid.UUID
    session_title: str
    seq: int
    role: str
    created_at: datetime | None
    snippet: str
    highlights: list[tuple[int, int]]  # [start, end) character ranges of `snippet` that matched
    rank: float


def query_words(q: object) -> list[str]:
    """The words of a search query: what both engines are given. Bad input is InvalidInput."""
    if not isinstance(q, str) or not q.strip():
        raise InvalidInput("Give something to search for (q).", field="q")
    if len(q) > MAX_QUERY_CHARS:
        raise InvalidInput(f"A search is at most {MAX_QUERY_CHARS} characters.", field="q")
    words = [w.lower() for w in _WORD.findall(q.replace("_", " "))]
    words = list(dict.fromkeys(w[:MAX_WORD_CHARS] for w in words))
    if not words:
        raise InvalidInput("The search has no words to look for (letters or digits).", field="q")
    if len(words) > MAX_WORDS:
        raise InvalidInput(f"A search has at most {MAX_WORDS} words.", field="q")
    return words


def search_messages(*, user_id: int, q: object, limit: int, offset: int) -> list[Hit]:
    """The user's messages that hold every word of `q`, best first (then newest). Never another user's."""
    words = query_words(q)
    if connection.vendor == "postgresql":
        return _postgres(user_id, words, limit, offset)
    return _sqlite(user_id, words, limit, offset)


def _cols() -> dict[str, str]:
    q = connection.ops.quote_name
    m = {name: q(Message._meta.get_field(name).column) for name in ("id", "session", "seq", "role", "created_at", "content", "type", "status")}
    return {
        **{f"m_{k}": v for k, v in m.items()},
        "messages": q(Message._meta.db_table),
        "sessions": q(ChatSession._meta.db_table),
        "s_id": q(ChatSession._meta.get_field("id").column),
        "s_owner": q(ChatSession._meta.get_field("owner").column),
        "s_title": q(ChatSession._meta.get_field("title").column),
    }


def _postgres(user_id: int, words: list[str], limit: int, offset: int) -> list[Hit]:
    c = _cols()
    # Every word a prefix, all of them required; words are letters and digits only (query_words).
    tsquery = " & ".join(f"{w}:*" for w in words)
    vector = SEARCH_VECTOR.format(content=f"m.{c['m_content']}")
    sql = (
        # The newest CANDIDATES matches of the user's (the same expression and predicate as the index, chat.0008,
        # so the planner can use it; only their ids and times are sorted), ranked; snippets for the page's rows only.
        f"WITH hits AS MATERIALIZED (SELECT m.{c['m_id']} AS id FROM {c['messages']} m JOIN {c['sessions']} s ON s.{c['s_id']} = m.{c['m_session']}"
        f" WHERE {vector} @@ to_tsquery('simple', %s) AND m.{c['m_type']} = 'text' AND m.{c['m_status']} <> 'streaming' AND s.{c['s_owner']} = %s"
        f" ORDER BY m.{c['m_created_at']} DESC LIMIT %s),"
        f" ranked AS MATERIALIZED (SELECT m.{c['m_id']} AS id, m.{c['m_session']} AS session_id, m.{c['m_seq']} AS seq, m.{c['m_role']} AS role,"
        f" m.{c['m_created_at']} AS created_at, m.{c['m_content']} AS content, ts_rank({vector}, query) AS rank, query"
        f" FROM hits JOIN {c['messages']} m ON m.{c['m_id']} = hits.id, to_tsquery('simple', %s) query"
        f" ORDER BY rank DESC, m.{c['m_created_at']} DESC, m.{c['m_id']} LIMIT %s OFFSET %s)"
        f" SELECT r.id, r.session_id, s.{c['s_title']}, r.seq, r.role, r.created_at, ts_headline('simple', r.content, r.query, %s), r.rank"
        f" FROM ranked r JOIN {c['sessions']} s ON s.{c['s_id']} = r.session_id ORDER BY r.rank DESC, r.created_at DESC, r.id"
    )
    options = f"StartSel={_OPEN}, StopSel={_CLOSE}, MaxWords={SNIPPET_WORDS}, MinWords={SNIPPET_WORDS // 2}, ShortWord=0, MaxFragments=2, FragmentDelimiter=\" … \""
    with connection.cursor() as cursor:
        cursor.execute(sql, [tsquery, user_id, CANDIDATES, tsquery, limit, offset, options])
        rows = cursor.fetchall()
    return [_hit(row, float(row[7])) for row in rows]


def _sqlite(user_id: int, words: list[str], limit: int, offset: int) -> list[Hit]:
    c = _cols()
    match = " AND ".join(f'"{w}"*' for w in words)
    sql = (
        # FTS5 walks the matches newest first (rowid order) and stops at the user's CANDIDATES newest; bm25 and
        # the snippet are computed for those only, then the best of them come first.
        f"SELECT h.id, h.session_id, s.{c['s_title']}, h.seq, h.role, h.created_at, h.snippet, h.rank FROM ("
        f"SELECT m.{c['m_id']} AS id, m.{c['m_session']} AS session_id, m.{c['m_seq']} AS seq, m.{c['m_role']} AS role,"
        f" m.{c['m_created_at']} AS created_at, snippet(chat_message_fts, 0, %s, %s, '…', %s) AS snippet, bm25(chat_message_fts) AS rank"
        f" FROM chat_message_fts JOIN {c['messages']} m ON m.rowid = chat_message_fts.rowid"
        f" JOIN {c['sessions']} s ON s.{c['s_id']} = m.{c['m_session']}"
        f" WHERE chat_message_fts MATCH %s AND s.{c['s_owner']} = %s ORDER BY chat_message_fts.rowid DESC LIMIT %s) h"
        f" JOIN {c['sessions']} s ON s.{c['s_id']} = h.session_id"
        f" ORDER BY h.rank, h.created_at DESC, h.id LIMIT %s OFFSET %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [_OPEN, _CLOSE, SNIPPET_WORDS, match, user_id, CANDIDATES, limit, offset])
        rows = cursor.fetchall()
    return [_hit(row, -float(row[7])) for row in rows]  # bm25: lower is better; the answer says higher is better


def _hit(row: tuple, rank: float) -> Hit:
    snippet, highlights = _marks(row[6] or "")
    return Hit(to_uuid(row[0]), to_uuid(row[1]), row[2], int(row[3]), row[4], to_datetime(row[5]), snippet, highlights, round(rank, 6))


def _marks(marked: str) -> tuple[str, list[tuple[int, int]]]:
    """The snippet without the engines' marks, and where the marks were (character ranges)."""
    out: list[str] = []
    ranges: list[tuple[int, int]] = []
    length, start = 0, None
    for part in re.split(f"([{_OPEN}{_CLOSE}])", marked):
        if part == _OPEN:
            start = length
        elif part == _CLOSE:
            if start is not None and length > start:
                ranges.append((start, length))
            start = None
        else:
            out.append(part)
            length += len(part)
    return "".join(out), ranges
