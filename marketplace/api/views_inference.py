"""/v1/chat/completions on fine-tuned models (REFERENCE §8): OpenAI's request and response
shapes, `stream: true` as Server-Sent Events. Authorization, metering and billing are the
inference services'; a backend (local worker or vLLM) computes."""

from __future__ import annotations

from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api.authentication import organization_of
from marketplace.api.views import AlwaysJson
from marketplace.inference import services
from marketplace.inference.backends import ChatRequest
from marketplace.inference.shapes import completion_events, completion_object

MAX_COMPLETION_TOKENS = 4096


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant"])
    content = serializers.JSONField()

    def validate_content(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in value
        ):
            return "".join(p["text"] for p in value)
        raise serializers.ValidationError("content must be a string or a list of text parts.")


class ChatCompletionSerializer(serializers.Serializer):
    model = serializers.CharField(help_text="A fine-tuned model: the job's `fine_tuned_model`.")
    messages = MessageSerializer(many=True, allow_empty=False)
    max_completion_tokens = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_COMPLETION_TOKENS
    )
    max_tokens = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_COMPLETION_TOKENS
    )
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2, allow_null=True)
    top_p = serializers.FloatField(required=False, min_value=0, max_value=1, allow_null=True)
    seed = serializers.IntegerField(required=False, allow_null=True)
    stop = serializers.JSONField(required=False, allow_null=True)
    stream = serializers.BooleanField(required=False, default=False)
    stream_options = serializers.DictField(required=False, allow_null=True)
    n = serializers.IntegerField(required=False, min_value=1, max_value=1)

    def validate_stop(self, value: Any) -> list[str]:
        stops = [value] if isinstance(value, str) else value or []
        if (
            not isinstance(stops, list)
            or len(stops) > 4
            or not all(isinstance(s, str) for s in stops)
        ):
            raise serializers.ValidationError("stop must be a string or a list of up to 4 strings.")
        return stops

    def chat_request(self) -> ChatRequest:
        data = self.validated_data
        return ChatRequest(
            messages=[{"role": m["role"], "content": m["content"]} for m in data["messages"]],
            max_tokens=data.get("max_completion_tokens") or data.get("max_tokens") or 256,
            temperature=data.get("temperature"),
            top_p=data.get("top_p"),
            seed=data.get("seed"),
            stop=tuple(data.get("stop") or ()),
        )


class ChatMessageObject(serializers.Serializer):
    role = serializers.ChoiceField(choices=["assistant"])
    content = serializers.CharField()


class ChatChoiceObject(serializers.Serializer):
    index = serializers.IntegerField()
    message = ChatMessageObject()
    finish_reason = serializers.ChoiceField(choices=["stop", "length"])


class ChatUsageObject(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class ChatCompletionObject(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["chat.completion"])
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = ChatChoiceObject(many=True)
    usage = ChatUsageObject()


def completion_response(
    completion: services.Completion, *, stream: bool, include_usage: bool
) -> Any:
    if not stream:
        return completion_object(completion)
    response = StreamingHttpResponse(
        completion_events(completion, include_usage=include_usage), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


class ChatCompletionsView(APIView):
    content_negotiation_class = AlwaysJson

    @extend_schema(
        operation_id="chat_completions_create",
        request=ChatCompletionSerializer,
        responses={
            (200, "application/json"): ChatCompletionObject,
            (200, "text/event-stream"): OpenApiResponse(
                {"type": "string"},
                description="Server-Sent Events: `data: <chat.completion.chunk>` per piece of "
                "the answer, a usage chunk when stream_options.include_usage, then "
                "`data: [DONE]`.",
            ),
        },
    )
    def post(self, request: Request) -> Any:
        serializer = ChatCompletionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        completion = services.chat_completion_start(
            organization=organization_of(request),
            model=serializer.validated_data["model"],
            request=serializer.chat_request(),
        )
        stream = serializer.validated_data["stream"]
        options = serializer.validated_data.get("stream_options") or {}
        result = completion_response(
            completion, stream=stream, include_usage=bool(options.get("include_usage"))
        )
        return result if stream else Response(result)
