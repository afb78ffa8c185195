"""Training files: upload with the validation report (every bad line), list, detail, download."""

from __future__ import annotations

from typing import IO, Any

from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect

from marketplace.errors import InvalidInput, PartageError
from marketplace.finetuning import selectors as ft
from marketplace.finetuning.services import file_create
from marketplace.portal.context import org_required, page
from marketplace.portal.forms import UploadForm

EXCERPT_CHARS = 160


def _excerpts(stream: IO[bytes], line_numbers: set[int]) -> dict[int, str]:
    """The text of the reported lines, so people see what is wrong without opening the file."""
    found: dict[int, str] = {}
    if not line_numbers:
        return found
    last = max(line_numbers)
    stream.seek(0)
    for number, raw in enumerate(stream, start=1):
        if number in line_numbers:
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            found[number] = text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"
        if number >= last:
            break
    return found


def _report_rows(report: dict[str, Any], stream: IO[bytes]) -> list[dict[str, Any]]:
    errors = report.get("errors") or []
    excerpts = _excerpts(stream, {int(e["line"]) for e in errors if e.get("line")})
    return [{**e, "excerpt": excerpts.get(int(e.get("line") or 0), "")} for e in errors]


@org_required
def file_list(request: HttpRequest) -> HttpResponse:
    org = request.org  # type: ignore[attr-defined]
    form = UploadForm(request.POST or None, request.FILES or None)
    context: dict[str, Any] = {"form": form}
    status = 200
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            file = file_create(
                organization=org,
                stream=upload,
                filename=upload.name or "training.jsonl",
                size=upload.size,
            )
        except PartageError as e:
            # Bad content (with its validation report), or a refusal of any upload (residency,
            # the organization's deletion scheduled): either way nothing was stored.
            report = e.details if isinstance(e.details, dict) else None
            context["rejected"] = {
                "filename": upload.name,
                "message": e.message,
                "report": report,
                "rows": _report_rows(report, upload) if report else [],
            }
            status = 400 if isinstance(e, InvalidInput) else e.http_status
        else:
            return redirect("portal:file", file_id=file.id)
    elif request.method == "POST":
        status = 400
    context["files"] = ft.files_for_org(org).filter(purpose="fine-tune")
    return page(request, "portal/files/list.html", context, status=status)


def _file_or_404(request: HttpRequest, file_id: str) -> Any:
    file = ft.files_for_org(request.org).filter(pk=file_id).first()  # type: ignore[attr-defined]
    if file is None:
        raise Http404("No such file in your organization.")
    return file


@org_required
def file_detail(request: HttpRequest, file_id: str) -> HttpResponse:
    file = _file_or_404(request, file_id)
    report = file.status_details or {}
    return page(request, "portal/files/detail.html", {"file": file, "report": report})


@org_required
def file_download(request: HttpRequest, file_id: str) -> FileResponse:
    file = _file_or_404(request, file_id)
    content_type = (
        "application/gzip" if file.purpose == "fine-tune-results" else "application/jsonl"
    )
    return FileResponse(
        file.content.open("rb"),
        content_type=content_type,
        as_attachment=True,
        filename=file.filename,
    )
