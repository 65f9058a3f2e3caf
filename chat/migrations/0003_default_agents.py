from django.db import migrations

DEFAULT_AGENTS = [
    {
        "slug": "assistant",
        "name": "Assistant",
        "description": "General help: answers questions, does arithmetic, tells the time, finds earlier messages.",
        "system_prompt": "You are a helpful, concise assistant. Use tools when they help; say when you are unsure.",
        "tools": ["calculator", "current_time", "search_messages", "client_time"],
        "is_orchestrator": False,
    },
    {
        "slug": "coder",
        "name": "Coder",
        "description": "Programming: code, bugs, errors, functions, Python, JavaScript, SQL, tests and reviews.",
        "system_prompt": "You are a careful senior programmer. Answer with working code in fenced blocks and explain briefly.",
        "tools": ["calculator", "search_messages"],
        "is_orchestrator": False,
    },
    {
        "slug": "researcher",
        "name": "Researcher",
        "description": "Research and writing: summarise, compare, explain, outline, draft reports and notify by webhook.",
        "system_prompt": "You research and write clearly, with structure and sources where you have them.",
        "tools": ["search_messages", "current_time", "webhook_post"],
        "is_orchestrator": False,
    },
    {
        "slug": "orchestrator",
        "name": "Orchestrator",
        "description": "Routes each request to the best agent and proposes multi-step plans for larger work.",
        "system_prompt": "You route requests to the best agent and break larger work into steps.",
        "tools": ["propose_plan"],
        "is_orchestrator": True,
    },
]


def create_agents(apps, schema_editor):
    Agent = apps.get_model("chat", "Agent")
    for data in DEFAULT_AGENTS:
        Agent.objects.get_or_create(slug=data["slug"], defaults={**data, "provider": "demo"})


def remove_agents(apps, schema_editor):
    Agent = apps.get_model("chat", "Agent")
    Agent.objects.filter(slug__in=[a["slug"] for a in DEFAULT_AGENTS]).delete()


class Migration(migrations.Migration):
    dependencies = [("chat", "0002_initial")]
    operations = [migrations.RunPython(create_agents, remove_agents)]
