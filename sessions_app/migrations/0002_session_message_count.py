# The message count moves onto the session row, kept by the transactions that add messages,
# instead of a COUNT per request. Existing sessions get their count once, here.

from django.db import migrations, models
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce


def count_messages(apps, schema_editor):
    ChatSession = apps.get_model("sessions_app", "ChatSession")
    Message = apps.get_model("chat", "Message")
    counts = Message.objects.filter(session=OuterRef("pk")).order_by().values("session").annotate(n=Count("pk")).values("n")
    ChatSession.objects.update(message_count=Coalesce(Subquery(counts), 0))


class Migration(migrations.Migration):

    dependencies = [
        ('sessions_app', '0001_initial'),
        ('chat', '0005_toolcall_started_plan_driver'),
    ]

    operations = [
        migrations.AddField(
            model_name='chatsession',
            name='message_count',
            field=models.PositiveBigIntegerField(default=0),
        ),
        migrations.RunPython(count_messages, migrations.RunPython.noop),
    ]
