# Token totals per session and per user per day, kept by each reply's final transaction. The
# totals of the replies already saved are computed once, here, from their metadata.usage.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from chat import usage


def compute_totals(apps, schema_editor):
    usage.rebuild(apps.get_model("chat", "Message"), apps.get_model("sessions_app", "ChatSession"), apps.get_model("chat", "UsageDay"))


class Migration(migrations.Migration):

    dependencies = [
        ('chat', '0006_streaming_index_worker_channel'),
        ('sessions_app', '0003_session_tokens'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='TokenBudget',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('daily_tokens', models.PositiveBigIntegerField(help_text='Tokens a day (prompt and completion); 0 for no limit.')),
                ('user', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='token_budget', to=settings.AUTH_USER_MODEL)),
            ],
        ),
        migrations.CreateModel(
            name='UsageDay',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('day', models.DateField()),
                ('prompt_tokens', models.PositiveBigIntegerField(default=0)),
                ('completion_tokens', models.PositiveBigIntegerField(default=0)),
                ('replies', models.PositiveIntegerField(default=0, help_text='Replies counted (usage reported, or estimated from the text).')),
                ('user', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'verbose_name': 'usage per day',
                'verbose_name_plural': 'usage per day',
                'indexes': [models.Index(fields=['day'], name='usage_day')],
                'constraints': [models.UniqueConstraint(fields=('user', 'day'), name='usage_user_day_unique')],
            },
        ),
        migrations.RunPython(compute_totals, migrations.RunPython.noop),
    ]
