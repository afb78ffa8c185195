"""Routes of inference on fine-tuned models."""

from django.urls import path

from marketplace.api import views_inference

urlpatterns = [
    path(
        "chat/completions", views_inference.ChatCompletionsView.as_view(), name="chat-completions"
    ),
]
