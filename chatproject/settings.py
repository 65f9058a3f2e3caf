"""Settings, read from the environment (see the configuration table in README.md)."""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def webhook_origins(text: str) -> list[str]:
    """WEBHOOK_ALLOWED_ORIGINS: comma-separated scheme://host[:port], checked here so a typo stops the start."""
    from urllib.parse import urlsplit

    origins = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        parts = urlsplit(entry)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1 or parts.path not in ("", "/") or parts.query:
            raise ImproperlyConfigured(f"WEBHOOK_ALLOWED_ORIGINS: {entry!r} is not scheme://host[:port]")
        origins.append(entry.rstrip("/"))
    return origins


def webhook_networks(text: str) -> list[str]:
    import ipaddress

    networks = []
    for entry in (e.strip() for e in text.split(",")):
        if entry:
            try:
                networks.append(str(ipaddress.ip_network(entry, strict=False)))
            except ValueError:
                raise ImproperlyConfigured(f"WEBHOOK_ALLOWED_NETWORKS: {entry!r} is not an address or a network") from None
    return networks


def read_or_create_secret(path: Path) -> str:
    """The key in `path`, created once with mode 0600, atomically: processes starting together share one key."""
    if not path.exists():
        import secrets
        import tempfile

        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.")  # mode 0600 from the start
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(50))
            with contextlib.suppress(FileExistsError):  # another process got there first: its key wins
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    return path.read_text().strip()


DEBUG = env_bool("DEBUG", False)
# SECRET_KEY from the environment; otherwise a random key kept in .secret_key
# (never a key that ships in the source, which would make sessions forgeable).
SECRET_KEY = os.environ.get("SECRET_KEY", "") or read_or_create_secret(BASE_DIR / ".secret_key")

ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h.strip()]
# `/metrics` needs `Authorization: Bearer <METRICS_TOKEN>` when it is set (for deployments that cannot firewall it).
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "axes",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "chat",
    "sessions_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "chatproject.metrics.RequestMetricsMiddleware",
    # Last, as django-axes asks: turns a locked-out sign-in into chatproject.security.lockout_response.
    "axes.middleware.AxesMiddleware",
]

# Sign-in lockout (django-axes) on every path that checks a password: the login page, the admin's
# and the token endpoint. Failures are counted per client address (chatproject.security.client_ip).
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("LOGIN_LOCKOUT_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "chatproject.security.client_ip"
AXES_LOCKOUT_CALLABLE = "chatproject.security.lockout_response"
AXES_VERBOSE = False
# Proxies in front of the server that append to X-Forwarded-For; 0: the header is never believed.
TRUSTED_PROXIES = env_int("TRUSTED_PROXIES", 0)
if TRUSTED_PROXIES > 0:
    # Behind a proxy that ends TLS: it says so in X-Forwarded-Proto (and overwrites what a client sent),
    # so links, secure cookies and the CSRF origin check see https.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

ROOT_URLCONF = "chatproject.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = None
ASGI_APPLICATION = "chatproject.asgi.application"

# Database: DATABASE_URL, default a SQLite file in the project folder.
DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
_db = dj_database_url.parse(DATABASE_URL, conn_max_age=0)
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run while the reply task writes; IMMEDIATE takes the write
    # lock at BEGIN so two writers queue instead of failing on a lock upgrade.
    _db["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file (not :memory:) so threads and server processes started by tests share it; one per run.
    _db["TEST"] = {"NAME": str(BASE_DIR / f".test-db-{os.getpid()}.sqlite3")}
elif _db["ENGINE"] == "django.db.backends.postgresql":
    # Async deployments: CONN_MAX_AGE=0 and psycopg's pool instead of persistent connections.
    _db["OPTIONS"] = {
        "pool": {
            "min_size": env_int("DB_POOL_MIN", 2),
            "max_size": env_int("DB_POOL_MAX", 20),
            # A request waits this long for a connection (then 503 `unavailable`): long enough for a burst.
            "timeout": env_float("DB_POOL_TIMEOUT", 30.0),
        }
    }
    # One test database per test run, so concurrent runs do not collide.
    _db["TEST"] = {"NAME": f"test_{_db['NAME']}_{os.getpid()}"}
DATABASES = {"default": _db}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis: when REDIS_URL is set, the bus between server processes (chat.engine.bus) and the cache;
# without it, one process and an in-memory cache. No Channels layer: sockets are written to directly.
REDIS_URL = os.environ.get("REDIS_URL", "")
CHANNEL_LAYERS: dict = {}
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": os.environ.get("CACHE_PREFIX", "chat"),
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Where `collectstatic` puts the files a proxy serves (SERVE_STATIC=0).
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT") or BASE_DIR / "staticfiles")
# The ASGI app serves /static/ itself unless a proxy does (SERVE_STATIC=0).
SERVE_STATIC = env_bool("SERVE_STATIC", True)

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
    CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "chatproject.errors.api_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["chatproject.throttling.WriteRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "writes": os.environ.get("THROTTLE_WRITES", "120/min"),
        "login": os.environ.get("THROTTLE_LOGIN", "10/min"),
        "search": os.environ.get("THROTTLE_SEARCH", "60/min"),
    },
    "UNAUTHENTICATED_USER": None,
    "NUM_PROXIES": TRUSTED_PROXIES,  # the throttles' client address, as chatproject.security.client_ip
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Chat backend API",
    "DESCRIPTION": "Sessions, messages, reactions, agents and tools. Streaming happens over WebSocket at /ws/sessions/{id}/.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # No anonymous access outside DEBUG, the API reference included.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "chatproject.schema.add_error_responses",
    ],
}

# Product limits and behaviour.
CHAT = {
    "MAX_MESSAGE_CHARS": env_int("MAX_MESSAGE_CHARS", 32000),
    "MAX_TITLE_CHARS": 200,
    "MAX_REACTIONS_PER_USER": 10,
    "IDEMPOTENCY_TTL_SECONDS": env_int("IDEMPOTENCY_TTL_SECONDS", 24 * 3600),
    "SESSION_TTL_DAYS": env_int("SESSION_TTL_DAYS", 30),
    # Demo provider pace: seconds between deltas of an ordinary reply.
    "DEMO_DELTA_DELAY": env_float("DEMO_DELTA_DELAY", 0.03),
    "DEMO_SLOW_DELAY": env_float("DEMO_SLOW_DELAY", 0.1),
    # Streaming: the text so far is written at most this often (seconds).
    "CHECKPOINT_INTERVAL": env_float("CHECKPOINT_INTERVAL", 1.0),
    # Deltas of a reply that arrive within this window (seconds) leave in one frame.
    "STREAM_WINDOW": env_float("STREAM_WINDOW", 0.04),
    # With many replies streaming the window grows, up to STREAM_WINDOW_MAX, so that the process
    # sends about STREAM_FRAMES_PER_SECOND delta frames in all (one per reply per window).
    "STREAM_WINDOW_MAX": env_float("STREAM_WINDOW_MAX", 0.25),
    "STREAM_FRAMES_PER_SECOND": env_float("STREAM_FRAMES_PER_SECOND", 5000),
    # Threads that run database steps (0: by database, 1 + 2 on SQLite, 4 + 4 on PostgreSQL).
    "DB_WRITE_THREADS": env_int("DB_WRITE_THREADS", 0),
    "DB_READ_THREADS": env_int("DB_READ_THREADS", 0),
    # Seconds a thread keeps the GIL while another waits for it (Python's default: 0.005). A
    # database thread waits for the GIL after every statement while the event loop streams; a
    # shorter interval gets a turn's statements through sooner (set by the server, chatproject.asgi).
    "GIL_SWITCH_INTERVAL": env_float("GIL_SWITCH_INTERVAL", 0.0005),
    # Redis keys of the bus between processes.
    "BUS_PREFIX": os.environ.get("CHANNEL_PREFIX", "asgi"),
    # A server process whose heartbeat is older than this is taken for dead.
    "WORKER_TIMEOUT": env_float("WORKER_TIMEOUT", 30.0),
    "WORKER_HEARTBEAT": env_float("WORKER_HEARTBEAT", 5.0),
    # Seconds a process given SIGTERM lets its running replies, tools and plan steps finish before it interrupts them.
    "SHUTDOWN_GRACE": env_float("SHUTDOWN_GRACE", 30.0),
    # Socket frames a client may send per second before it gets rate_limited.
    "WS_FRAMES_PER_SECOND": env_int("WS_FRAMES_PER_SECOND", 20),
    "WS_MAX_FRAME_BYTES": env_int("WS_MAX_FRAME_BYTES", 256 * 1024),
    # A socket with more than this of output it has not read yet (held here and in its connection's
    # buffer) is closed with 4408; the client reconnects and gets session.ready.
    "WS_MAX_UNSENT_BYTES": env_int("WS_MAX_UNSENT_BYTES", 4 * 1024 * 1024),
    # `resync` frames per socket per minute (a few at once are fine); beyond, `rate_limited`.
    "WS_RESYNCS_PER_MINUTE": env_int("WS_RESYNCS_PER_MINUTE", 12),
    # Per-user budgets (chat.turn.budget); 0 turns one off. Turns: REST and socket together.
    "TURNS_PER_MINUTE": env_int("TURNS_PER_MINUTE", 20),
    "MAX_REPLIES_PER_USER": env_int("MAX_REPLIES_PER_USER", 5),
    # Tokens (prompt and completion) a user's replies may use a day (UTC); a user's TokenBudget,
    # set in the admin, replaces it for them. 0: no budget.
    "DAILY_TOKEN_BUDGET": env_int("DAILY_TOKEN_BUDGET", 0),
    # Seconds between rechecks of every socket's credential (closed with 4401 once it is gone).
    "WS_AUTH_RECHECK_SECONDS": env_float("WS_AUTH_RECHECK_SECONDS", 5.0),
    # Open sockets of one user in one server process.
    "WS_MAX_SOCKETS_PER_USER": env_int("WS_MAX_SOCKETS_PER_USER", 20),
    # The kernel's send buffer of a socket (0: the system's, which grows to megabytes for a slow reader).
    "WS_SEND_BUFFER_BYTES": env_int("WS_SEND_BUFFER_BYTES", 128 * 1024),
    "HISTORY_MESSAGES": env_int("HISTORY_MESSAGES", 50),
    # Messages one session may hold in its queue (sent with on_busy enqueue or interrupt while a turn runs).
    "MAX_QUEUED_MESSAGES": env_int("MAX_QUEUED_MESSAGES", 10),
    # A reply longer than this ends `failed` with its text kept (a model stuck in a loop).
    "MAX_REPLY_CHARS": env_int("MAX_REPLY_CHARS", 200_000),
    # OpenAI-compatible provider defaults (an agent may override base URL, key variable and model).
    "OPENAI_BASE_URL": os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
    "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", ""),
    "OPENAI_MODEL": os.environ.get("OPENAI_MODEL", "gpt-4o-mini"),
    "OPENAI_TIMEOUT": env_float("OPENAI_TIMEOUT", 60.0),
    "OPENAI_FIRST_TOKEN_TIMEOUT": env_float("OPENAI_FIRST_TOKEN_TIMEOUT", 30.0),
    "OPENAI_MAX_RETRIES": env_int("OPENAI_MAX_RETRIES", 2),
    # An agent's api_key_env must start with this: an agent may read no other environment variable.
    "AGENT_KEY_ENV_PREFIX": os.environ.get("AGENT_KEY_ENV_PREFIX", "MODEL_KEY_") or "MODEL_KEY_",
    # Origins (scheme://host[:port]) the approval-gated webhook_post tool may reach: none by default.
    "WEBHOOK_ALLOWED_ORIGINS": webhook_origins(os.environ.get("WEBHOOK_ALLOWED_ORIGINS", "")),
    # Networks (CIDR) a webhook host name may resolve to although they are not public (loopback, private...).
    "WEBHOOK_ALLOWED_NETWORKS": webhook_networks(os.environ.get("WEBHOOK_ALLOWED_NETWORKS", "")),
}

# LOG_FORMAT=json: one JSON object per line (chatproject.logs); either way a line about a turn names its ids.
LOG_FORMAT = (os.environ.get("LOG_FORMAT") or "plain").strip().lower()
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"ids": {"()": "chatproject.logs.IdsFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s%(ids_text)s"},
        "json": {"()": "chatproject.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["ids"]}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}

TEST_RUNNER = "chatproject.test_runner.PytestRunner"
