"""A startup's whole journey in real Chromium: sign up → upload (a validation error, then the
fix) → launch with a cost review → watch the progress bar and the loss chart → download.

Training is real: the tiny catalog model trains in a local trainer process that reports back to
the live server over HTTP; Celery runs eagerly inside the live server.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from marketplace.finetuning.models import FineTuningJob, JobAttempt
from tests.conftest import wait_for
from tests.portal.browser.conftest import assert_accessible

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


# Evaluated by the browser every 100 ms: records each in-progress value of the bar and size of
# the loss chart; true once enough distinct ones were seen, or once the job has ended (then the
# test's assertions say what was missing).
WATCH = """need => {
  const seen = JSON.parse(sessionStorage.getItem("watch") || '{"values": [], "points": []}');
  const status = document.getElementById("job-live").dataset.status;
  const value = document.getElementById("job-progress").value;
  const points = Number(document.getElementById("loss-chart").dataset.trainPoints || 0);
  if ((status === "running" || status === "finalizing") && value > 0 && value < 100) {
    if (!seen.values.includes(value)) { seen.values.push(value); }
    if (!seen.points.includes(points)) { seen.points.push(points); }
    sessionStorage.setItem("watch", JSON.stringify(seen));
  }
  const enough = seen.values.length >= need.values && seen.points.length >= need.points
    && Math.max(0, ...seen.points) >= need.min_points;
  const ended = ["succeeded", "failed", "cancelled"].includes(status);
  return enough || ended ? seen : false;
}"""


def _stable_evaluate(page: Any, expression: str) -> Any:
    """Evaluate in the current document, again after a reload that lands in the middle."""
    from playwright.sync_api import Error as PlaywrightError

    for _ in range(3):
        try:
            return page.evaluate(expression)
        except PlaywrightError as e:
            if "Execution context was destroyed" not in str(e):
                raise
            page.wait_for_load_state()
    raise AssertionError(f"{page.url} kept navigating")


def _rows(count: int) -> list[dict[str, Any]]:
    colours = ["red", "blue", "green", "yellow", "purple", "orange"]
    return [
        {
            "messages": [
                {"role": "user", "content": f"What colour is item {i}?"},
                {"role": "assistant", "content": f"Item {i} is {colours[i % len(colours)]}."},
            ]
        }
        for i in range(count)
    ]


def _jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def sign_up(page: Any, username: str, org_name: str) -> None:
    page.goto("/signup/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Email").fill(f"{username}@startup.example")
    page.get_by_label("Password", exact=True).fill("a-long-passphrase-42")
    page.get_by_label("Password confirmation").fill("a-long-passphrase-42")
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url("**/organization/")
    page.get_by_label("Name").fill(org_name)
    page.get_by_label("Country").fill("FR")
    page.get_by_role("button", name="Create organization").click()
    page.wait_for_url("**/overview/")


def upload(page: Any, name: str, content: bytes) -> None:
    page.goto("/data/")
    page.get_by_label("Training file (JSONL)").set_input_files(
        {"name": name, "mimeType": "application/jsonl", "buffer": content}
    )
    page.get_by_role("button", name="Upload and validate").click()


def test_sign_up_upload_launch_watch_download(
    browser: Any, live_callbacks: str, eager_celery: Any, tmp_path: Path
) -> None:
    page = browser.page
    sign_up(page, "dana", "Dana Labs")
    assert page.get_by_role("heading", name="Dana Labs").is_visible()
    page.goto("/api-keys/")
    page.get_by_label("Name").fill("ci-pipeline")
    page.get_by_role("button", name="Create key").click()
    assert page.locator("#new-key").inner_text().startswith("sk-ptg-")
    browser.shot("api-key-created")

    # 1. A file with three bad lines: every one is reported with its number, nothing is stored.
    good = [json.dumps(r) for r in _rows(24)]
    bad = list(good)
    bad[1] = '{"messages": [{"role": "user", "content": "no answer"}]}'
    bad[4] = "{not json"
    bad[6] = (
        '{"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "ok"}]}'
    )
    upload(page, "colours.jsonl", _jsonl(bad))
    report = page.locator("#validation-report")
    report.wait_for()
    rows = report.locator("tbody tr")
    assert rows.count() == 3
    assert [rows.nth(i).get_attribute("data-line") for i in range(3)] == ["2", "5", "7"]
    text = report.inner_text()
    assert "no_assistant_message" in text and "invalid_json" in text
    assert "unrecognized_role" in text
    assert "{not json" in text  # the offending line itself is shown
    assert_accessible(browser)
    browser.shot("upload-validation-errors")
    assert FineTuningJob.objects.count() == 0

    # 2. The fixed file is accepted, with its report.
    upload(page, "colours.jsonl", _jsonl(good))
    page.wait_for_url("**/data/file-*/")
    assert "All 24 lines are valid" in page.inner_text("main")
    assert_accessible(browser)
    browser.shot("file-validated")

    # 3. Launch: settings, then the review with cost and start, then confirm.
    page.get_by_role("link", name="Launch a job with this file").click()
    page.get_by_label("Base model").select_option("partage/tiny-llama")
    page.get_by_label("Validation file").select_option(index=1)
    page.get_by_label("Epochs").fill("32")  # ~8 s of training when quiet
    page.get_by_label("Batch size").fill("1")
    page.get_by_label("Learning-rate multiplier").fill("5")
    page.get_by_label("Max sequence length").fill("64")
    page.get_by_label("LoRA rank (r)").fill("4")
    page.get_by_label("Suffix").fill("colours")
    browser.shot("launch-form")
    page.get_by_role("button", name="Review cost and start").click()
    page.get_by_role("heading", name="Review and confirm").wait_for()
    # No GPU pool exists here: the embedded default trains locally, free, at once.
    assert page.locator("#estimate-cost").inner_text().strip() == "€0.00"
    assert page.locator("#estimate-start").inner_text().strip() == "Now"
    assert_accessible(browser)
    browser.shot("launch-review")
    page.get_by_role("button", name="Confirm and launch").click()
    page.wait_for_url("**/jobs/ftjob-*/")
    job_id = page.url.rstrip("/").rsplit("/", 1)[-1]

    # 4. Watch: the progress bar moves and the loss chart grows, without reloading the page.
    # The browser itself records what the page shows while the job runs (in sessionStorage, so
    # the record survives the page's own reload when the job ends); the test waits on it.
    chart = page.locator("#loss-chart")
    page.wait_for_function(
        WATCH, arg={"values": 1, "points": 1, "min_points": 3}, polling=100, timeout=300_000
    )
    assert_accessible(browser)
    browser.shot("job-training")
    page.wait_for_function(
        WATCH, arg={"values": 2, "points": 2, "min_points": 0}, polling=100, timeout=300_000
    )
    # The record lives in sessionStorage: read it even if the page has just reloaded itself.
    seen = _stable_evaluate(page, "() => JSON.parse(sessionStorage.getItem('watch'))")
    assert len(seen["values"]) >= 2, f"progress bar values seen while running: {seen}"
    assert len(seen["points"]) >= 2, f"loss chart sizes seen while running: {seen}"
    # The page reloads itself once the job finishes; the adapter link then appears.
    download_link = page.locator("#download-adapter")
    download_link.wait_for(timeout=300_000)
    job = FineTuningJob.objects.get(pk=job_id)
    assert job.status == "succeeded", [a.logs[-2000:] for a in job.attempts.all()]
    # The trainer process reports its exit (and its logs) just after the adapter.
    wait_for(
        lambda: JobAttempt.objects.filter(job_id=job_id, ended_at__isnull=False).exists(),
        timeout=120,
        what="the trainer's exit report",
    )
    page.reload()
    logs = page.locator("pre.log").last.inner_text()
    assert logs.strip() and "The trainer's log appears here" not in logs, logs
    assert page.locator("#job-progress").evaluate("node => node.value") == 100
    page.wait_for_function(
        "() => Number(document.getElementById('loss-chart').dataset.trainPoints) > 3"
    )
    assert int(chart.get_attribute("data-valid-points") or 0) >= 1
    assert "PeftModel.from_pretrained" in page.inner_text("#peft-snippet")
    assert_accessible(browser)
    browser.shot("job-succeeded")

    # 5. Download the adapter archive and check what it holds.
    with page.expect_download() as download_info:
        download_link.click()
    target = tmp_path / "adapter.tar.gz"
    download_info.value.save_as(target)
    with tarfile.open(target) as archive:
        names = {Path(n).name for n in archive.getnames()}
        assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= names
        member = next(m for m in archive.getmembers() if m.name.endswith("manifest.json"))
        extracted = archive.extractfile(member)
        assert extracted is not None
        manifest = json.load(io.TextIOWrapper(extracted))
    assert manifest["base_model"]["id"] == "partage/tiny-llama"
    assert manifest == job.manifest

    # The same page on a phone (test_accessibility walks every page at this width).
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    page.locator("#download-adapter").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    browser.shot("job-succeeded-phone")

    # Log out: the session ends and private pages send back to the log-in page.
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{browser.base_url}/")
    page.goto("/jobs/")
    page.wait_for_url("**/login/?next=/jobs/")
