"""The OpenAPI 3 schema of /v1 (drf-spectacular): response shapes, auth, errors, idempotency.

The serializers here only document responses; the representations module builds them. A
schemathesis test checks every response against this schema, so keep the two in step.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from marketplace.accounts import scopes as key_scopes
from marketplace.api.idempotency import KEY_PATTERN, MAX_KEY_LENGTH

ERROR_STATUSES = {
    "400": "The request is invalid: error.param names the field, error.message says how to fix it.",
    "401": "Missing or invalid API key.",
    "403": "The API key may not do this (read-only, or limited to other resources).",
    "404": "No such object in your organization.",
    "409": "Conflict with the object's state, or an Idempotency-Key reused for another request.",
    "429": "Rate limit or quota exceeded; see the Retry-After header.",
}

# Errors only some operations answer with.
EXTRA_ERROR_STATUSES = {
    "chat_completions_create": {
        "402": "The organization's balance is used up: top it up.",
        "503": "The inference server for the model is unreachable or refused the adapter.",
    }
}


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "marketplace.api.authentication.ApiKeyAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "http", "scheme": "bearer", "description": "A Partage API key (sk-ptg-…)."}


def postprocess_errors_and_idempotency(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Add the one error shape to every operation, and the Idempotency-Key header to POSTs."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": "string", "nullable": True},
                    "code": {"type": "string", "nullable": True},
                    "details": {},
                },
            }
        },
    }
    error_ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status, description in ERROR_STATUSES.items():
                responses.setdefault(status, {"description": description, "content": error_ref})
            extra = EXTRA_ERROR_STATUSES.get(str(operation.get("operationId", "")), {})
            for status, description in extra.items():
                responses.setdefault(status, {"description": description, "content": error_ref})
            if method == "post":
                params = operation.setdefault("parameters", [])
                if not any(p.get("name") == "Idempotency-Key" for p in params):
                    params.append(
                        {
                            "in": "header",
                            "name": "Idempotency-Key",
                            "required": False,
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": MAX_KEY_LENGTH,
                                "pattern": KEY_PATTERN,
                            },
                            "description": "Repeat a POST safely: same key + same body → "
                            "same response; same key + another body → 409. 1 to 255 visible "
                            "ASCII characters, e.g. a UUID.",
                        }
                    )
    return result


# ---------------------------------------------------------------- documented shapes


def const(value: str) -> serializers.Field:
    """A string field that always holds `value` (documented as a one-value enum)."""
    field_class = extend_schema_field({"type": "string", "enum": [value]})(
        type("ConstField", (serializers.CharField,), {})
    )
    return field_class()


def unix_seconds(*, allow_null: bool = False, help_text: str = "") -> serializers.IntegerField:
    return serializers.IntegerField(
        allow_null=allow_null, help_text=help_text or "Unix time in seconds."
    )


def list_of(item: type[serializers.Serializer], name: str) -> type[serializers.Serializer]:
    """A serializer class for `{"object": "list", "data": [...], "has_more", first_id, last_id}`."""
    fields = {
        "object": const("list"),
        "data": item(many=True),
        "has_more": serializers.BooleanField(),
        "first_id": serializers.CharField(allow_null=True, required=False),
        "last_id": serializers.CharField(allow_null=True, required=False),
    }
    return shape(name, fields)


def shape(
    name: str,
    fields: dict[str, serializers.Field],
    *,
    base: type[serializers.Serializer] = serializers.Serializer,
    doc: str | None = None,
) -> type[serializers.Serializer]:
    """A serializer class built from a dict of fields.

    For shapes whose field names shadow Serializer attributes (`data`, `read_only`): a class
    body would redeclare those attributes with another type.
    """
    attrs: dict[str, Any] = {**fields, "__module__": __name__}
    if doc is not None:
        attrs["__doc__"] = doc
    return type(name, (base,), attrs)


class FileObject(serializers.Serializer):
    id = serializers.CharField()
    object = const("file")
    bytes = serializers.IntegerField()
    created_at = serializers.IntegerField()
    filename = serializers.CharField()
    purpose = serializers.CharField()
    status = serializers.ChoiceField(choices=["uploaded", "processed", "error"])
    status_details = serializers.JSONField(allow_null=True)
    sha256 = serializers.CharField()
    line_count = serializers.IntegerField()
    format = serializers.CharField(allow_null=True)


class DeletedObject(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    deleted = serializers.BooleanField()


class Hyperparameters(serializers.Serializer):
    n_epochs = serializers.JSONField(allow_null=True)
    batch_size = serializers.JSONField(allow_null=True)
    learning_rate_multiplier = serializers.JSONField(allow_null=True)


class JobError(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    param = serializers.CharField(allow_null=True)


class JobObject(serializers.Serializer):
    id = serializers.CharField()
    object = const("fine_tuning.job")
    created_at = serializers.IntegerField()
    finished_at = serializers.IntegerField(allow_null=True)
    model = serializers.CharField()
    fine_tuned_model = serializers.CharField(allow_null=True)
    organization_id = serializers.CharField()
    status = serializers.ChoiceField(
        choices=[
            "validating_files",
            "queued",
            "running",
            "paused",
            "succeeded",
            "failed",
            "cancelled",
        ]
    )
    error = JobError(allow_null=True)
    hyperparameters = Hyperparameters()
    method = serializers.JSONField()
    training_file = serializers.CharField()
    validation_file = serializers.CharField(allow_null=True)
    result_files = serializers.ListField(child=serializers.CharField())
    trained_tokens = serializers.IntegerField(allow_null=True)
    seed = serializers.IntegerField()
    estimated_finish = serializers.IntegerField(allow_null=True)
    metadata = serializers.DictField(child=serializers.CharField(), allow_null=True)
    suffix = serializers.CharField(allow_null=True)
    integrations = serializers.ListField(child=serializers.JSONField())
    user_provided_suffix = serializers.CharField(allow_null=True)
    partage = serializers.JSONField(
        help_text="Partage's own fields: state, pending reason, LoRA, GPU…"
    )


JobEventObject = shape(
    "JobEventObject",
    {
        "id": serializers.CharField(),
        "object": const("fine_tuning.job.event"),
        "created_at": serializers.IntegerField(),
        "level": serializers.ChoiceField(choices=["info", "warn", "error"]),
        "message": serializers.CharField(allow_blank=True),
        "type": serializers.ChoiceField(choices=["message", "metrics"]),
        "data": serializers.JSONField(allow_null=True),
    },
)


class CheckpointObject(serializers.Serializer):
    id = serializers.CharField()
    object = const("fine_tuning.job.checkpoint")
    created_at = serializers.IntegerField()
    fine_tuned_model_checkpoint = serializers.CharField()
    fine_tuning_job_id = serializers.CharField()
    step_number = serializers.IntegerField()
    metrics = serializers.JSONField()


class ModelObject(serializers.Serializer):
    id = serializers.CharField()
    object = const("model")
    created = serializers.IntegerField(allow_null=True)
    owned_by = serializers.CharField()


class WebhookEndpointObject(serializers.Serializer):
    id = serializers.CharField()
    object = const("webhook_endpoint")
    created_at = serializers.IntegerField()
    updated_at = serializers.IntegerField()
    name = serializers.CharField()
    url = serializers.CharField()
    event_types = serializers.ListField(child=serializers.CharField())
    signing_secret_hint = serializers.CharField()


class WebhookEndpointWithSecretObject(WebhookEndpointObject):
    signing_secret = serializers.CharField(help_text="Shown only at creation and rotation.")


class WebhookTestResultObject(serializers.Serializer):
    object = const("webhook_endpoint.test")
    webhook_endpoint_id = serializers.CharField()
    event_type = serializers.CharField()
    status_code = serializers.IntegerField(help_text="0 when the endpoint could not be reached.")
    success = serializers.BooleanField()
    error = serializers.CharField(allow_null=True)
    delivery_id = serializers.CharField()


WebhookEventTypeListObject = shape(
    "WebhookEventTypeListObject",
    {"object": const("list"), "data": serializers.ListField(child=serializers.CharField())},
)


class DeliveryAttemptObject(serializers.Serializer):
    number = serializers.IntegerField()
    created_at = serializers.IntegerField()
    status_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    duration_ms = serializers.IntegerField()


class WebhookDeliveryObject(serializers.Serializer):
    id = serializers.CharField()
    object = const("webhook_delivery")
    created_at = serializers.IntegerField()
    webhook_endpoint_id = serializers.CharField()
    event_id = serializers.CharField()
    event_type = serializers.CharField()
    status = serializers.ChoiceField(choices=["pending", "succeeded", "failed"])
    attempt_count = serializers.IntegerField()
    last_status_code = serializers.IntegerField(allow_null=True)
    next_attempt_at = serializers.IntegerField(allow_null=True)
    attempts = DeliveryAttemptObject(many=True)


class OrganizationObject(serializers.Serializer):
    id = serializers.CharField()
    object = const("organization")
    name = serializers.CharField()
    slug = serializers.CharField()
    kind = serializers.CharField()
    country = serializers.CharField(allow_blank=True)
    created_at = serializers.IntegerField()


class MemberObject(serializers.Serializer):
    id = serializers.CharField()
    object = const("organization.member")
    username = serializers.CharField()
    email = serializers.CharField(allow_null=True)
    role = serializers.ChoiceField(choices=["owner", "admin", "member"])
    created_at = serializers.IntegerField()


def _api_key_fields() -> dict[str, serializers.Field]:
    return {
        "id": serializers.CharField(),
        "object": const("api_key"),
        "name": serializers.CharField(),
        "prefix": serializers.CharField(),
        "created_at": serializers.IntegerField(),
        "last_used_at": serializers.IntegerField(allow_null=True),
        "revoked_at": serializers.IntegerField(allow_null=True),
        "read_only": serializers.BooleanField(help_text="The key can only read (scopes ['read'])."),
        "scopes": serializers.ListField(
            child=serializers.ChoiceField(choices=list(key_scopes.SCOPES)),
            help_text=key_scopes.SCOPES_HELP,
        ),
        "resources": serializers.ListField(child=serializers.CharField()),
    }


ApiKeyObject = shape("ApiKeyObject", _api_key_fields())
ApiKeyWithSecretObject = shape(
    "ApiKeyWithSecretObject",
    {**_api_key_fields(), "secret": serializers.CharField(help_text="Shown once, at creation.")},
)


FileList = list_of(FileObject, "FileList")
JobList = list_of(JobObject, "JobList")
JobEventList = list_of(JobEventObject, "JobEventList")
CheckpointList = list_of(CheckpointObject, "CheckpointList")
ModelList = list_of(ModelObject, "ModelList")
WebhookEndpointList = list_of(WebhookEndpointObject, "WebhookEndpointList")
WebhookDeliveryList = list_of(WebhookDeliveryObject, "WebhookDeliveryList")
MemberList = list_of(MemberObject, "MemberList")
ApiKeyList = list_of(ApiKeyObject, "ApiKeyList")
