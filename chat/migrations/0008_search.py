# Full-text search over finished text messages (see chat.search): a GIN index of the text on
# PostgreSQL; on SQLite an FTS5 table over chat_message (external content) kept by triggers.
# Streaming rows are left out of both, so the checkpoint of a streaming reply's text changes no
# index; the reply is indexed when it ends. Existing messages are indexed here.
#
# On PostgreSQL the index is built CONCURRENTLY (writes to chat_message go on meanwhile), so this
# migration is not atomic. On SQLite the FTS5 table follows chat_message by its implicit rowid:
# a later migration that makes SQLite rebuild chat_message (Django does for most AlterField and
# some AddField) drops these triggers and renumbers the rows; such a migration must create the
# triggers again and run INSERT INTO chat_message_fts(chat_message_fts) VALUES ('rebuild').

from django.db import migrations

# PostgreSQL's parser keeps host names, e-mail addresses, paths and numbers like 3.14 as single
# tokens; the punctuation inside them is turned into spaces first, so "example.com" is the words
# "example" and "com", as SQLite's unicode61 tokenizer has it. chat.search uses the same expression.
PG_VECTOR = "to_tsvector('simple', translate(content, '.@/:_+~#?=&\\|', '             '))"
PG_INDEX = f"CREATE INDEX CONCURRENTLY IF NOT EXISTS chat_message_search ON chat_message USING gin ({PG_VECTOR}) WHERE type = 'text' AND status <> 'streaming'"

# Indexed: type 'text' and not 'streaming'. A row leaves the index with the values it was indexed
# with; an update takes the old values out before it puts the new ones in (one trigger, in order).
SQLITE = [
    "CREATE VIRTUAL TABLE chat_message_fts USING fts5(content, content='chat_message', content_rowid='rowid', tokenize='unicode61 remove_diacritics 0')",
    "CREATE TRIGGER chat_message_fts_insert AFTER INSERT ON chat_message WHEN new.type = 'text' AND new.status <> 'streaming'"
    " BEGIN INSERT INTO chat_message_fts(rowid, content) VALUES (new.rowid, new.content); END",
    "CREATE TRIGGER chat_message_fts_delete AFTER DELETE ON chat_message WHEN old.type = 'text' AND old.status <> 'streaming'"
    " BEGIN INSERT INTO chat_message_fts(chat_message_fts, rowid, content) VALUES ('delete', old.rowid, old.content); END",
    "CREATE TRIGGER chat_message_fts_update AFTER UPDATE OF content, type, status ON chat_message BEGIN"
    " INSERT INTO chat_message_fts(chat_message_fts, rowid, content) SELECT 'delete', old.rowid, old.content"
    " WHERE old.type = 'text' AND old.status <> 'streaming';"
    " INSERT INTO chat_message_fts(rowid, content) SELECT new.rowid, new.content WHERE new.type = 'text' AND new.status <> 'streaming';"
    " END",
    "INSERT INTO chat_message_fts(rowid, content) SELECT rowid, content FROM chat_message WHERE type = 'text' AND status <> 'streaming'",
]
SQLITE_UNDO = [
    "DROP TRIGGER chat_message_fts_insert", "DROP TRIGGER chat_message_fts_delete", "DROP TRIGGER chat_message_fts_update", "DROP TABLE chat_message_fts",
]


def create(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_INDEX)
    elif vendor == "sqlite":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SAVEPOINT fts")  # the table, its triggers and its rows together
            try:
                for statement in SQLITE:
                    cursor.execute(statement)
            except Exception as exc:
                cursor.execute("ROLLBACK TO fts")
                if "fts5" in str(exc).lower():
                    raise RuntimeError("Search needs SQLite's FTS5 extension, which this Python's sqlite3 lacks.") from exc
                raise
            cursor.execute("RELEASE fts")


def drop(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS chat_message_search")
    elif vendor == "sqlite":
        for statement in SQLITE_UNDO:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction
    dependencies = [("chat", "0007_usage")]
    operations = [migrations.RunPython(create, drop)]
