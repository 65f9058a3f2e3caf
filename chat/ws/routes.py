from django.urls import path

from chat.ws.consumer import ChatConsumer

websocket_urlpatterns = [path("ws/sessions/<str:session_id>/", ChatConsumer.as_asgi())]
