# Full-text search over finished text messages (see chat.search): a GIN index of the text on
# PostgreSQL; on SQLite an FTS5 table over chat_message (external content) kept by triggers.
# Streaming rows are left out of both, so the checkpoint of a streaming reply's text changes no
# index; the reply is indexed when it ends. Existing messages are indexed here.

from django.db import migrations

PG_INDEX = (
    "CREATE INDEX chat_message_search ON chat_message USING gin (to_tsvector('simple', content))"
    " WHERE type = 'text' AND status <> 'streaming'"
)

# Indexed: type 'text' and not 'streaming'. A row leaves the index with the values it was indexed with.
SQLITE = [
    "CREATE VIRTUAL TABLE chat_message_fts USING fts5(content, content='chat_message', content_rowid='rowid', tokenize='unicode61 remove_diacritics 0')",
    "CREATE TRIGGER chat_message_fts_insert AFTER INSERT ON chat_message WHEN new.type = 'text' AND new.status <> 'streaming'"
    " BEGIN INSERT INTO chat_message_fts(rowid, content) VALUES (new.rowid, new.content); END",
    "CREATE TRIGGER chat_message_fts_delete AFTER DELETE ON chat_message WHEN old.type = 'text' AND old.status <> 'streaming'"
    " BEGIN INSERT INTO chat_message_fts(chat_message_fts, rowid, content) VALUES ('delete', old.rowid, old.content); END",
    "CREATE TRIGGER chat_message_fts_unindex AFTER UPDATE OF content, type, status ON chat_message"
    " WHEN old.type = 'text' AND old.status <> 'streaming'"
    " BEGIN INSERT INTO chat_message_fts(chat_message_fts, rowid, content) VALUES ('delete', old.rowid, old.content); END",
    "CREATE TRIGGER chat_message_fts_reindex AFTER UPDATE OF content, type, status ON chat_message"
    " WHEN new.type = 'text' AND new.status <> 'streaming'"
    " BEGIN INSERT INTO chat_message_fts(rowid, content) VALUES (new.rowid, new.content); END",
    "INSERT INTO chat_message_fts(rowid, content) SELECT rowid, content FROM chat_message WHERE type = 'text' AND status <> 'streaming'",
]
SQLITE_UNDO = [
    "DROP TRIGGER chat_message_fts_insert", "DROP TRIGGER chat_message_fts_delete",
    "DROP TRIGGER chat_message_fts_unindex", "DROP TRIGGER chat_message_fts_reindex", "DROP TABLE chat_message_fts",
]


def create(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_INDEX)
    elif vendor == "sqlite":
        for statement in SQLITE:
            try:
                schema_editor.execute(statement)
            except Exception as exc:
                if "fts5" in str(exc).lower():
                    raise RuntimeError("Search needs SQLite's FTS5 extension, which this Python's sqlite3 lacks.") from exc
                raise


def drop(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute("DROP INDEX chat_message_search")
    elif vendor == "sqlite":
        for statement in SQLITE_UNDO:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("chat", "0007_usage")]
    operations = [migrations.RunPython(create, drop)]
