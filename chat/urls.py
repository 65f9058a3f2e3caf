from django.urls import path

from chat import views

urlpatterns = [path("", views.chat_page, name="chat-page")]
