"""The job page's chat box in real Chromium: the answer streams in with JavaScript, and the same
form works with JavaScript off. A fake vLLM (tests/fakes/vllm_server.py) serves the model."""

from __future__ import annotations

from typing import Any

import pytest

from marketplace.inference.models import InferenceUsage
from tests.inference.conftest import fine_tuned, vllm  # noqa: F401 - fixture
from tests.portal.browser.conftest import Browser, assert_accessible
from tests.portal.browser.test_staff_journey import log_in
from tests.portal.test_job_evaluation_and_chat import _with_eval

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_alice_asks_her_model_from_the_job_page(
    chromium: Any,
    live_server: Any,
    alice: Any,
    org_a: Any,
    vllm: Any,  # noqa: F811
) -> None:
    job = _with_eval(fine_tuned(org_a))
    expected = f"{job.id} says: which colour is the sky"
    with_js = Browser(chromium, live_server.url)
    try:
        log_in(with_js, "alice", "alice-password-123")
        page = with_js.page
        page.goto(f"/jobs/{job.id}/")
        evaluation = page.locator("#evaluation")
        assert (
            "banana banana" in evaluation.inner_text()
            and "Item 3 is green." in evaluation.inner_text()
        )
        page.get_by_label("Your message").fill("which colour is the sky")
        page.get_by_role("button", name="Ask").click()
        page.wait_for_function(
            "expected => document.getElementById('chat-answer').textContent === expected",
            arg=expected,
        )
        page.wait_for_function(
            "() => /completion tokens/.test(document.getElementById('chat-usage').textContent)"
        )
        assert page.url.endswith(f"/jobs/{job.id}/")  # streamed in place: no navigation
        assert page.locator("#chat-usage").inner_text() == "5 prompt + 7 completion tokens"
        assert_accessible(with_js)
        assert not with_js.console_errors, with_js.console_errors
    finally:
        with_js.close()

    without_js = Browser(chromium, live_server.url)
    without_js.context.close()
    without_js.context = chromium.new_context(java_script_enabled=False, base_url=live_server.url)
    without_js.page = without_js.context.new_page()
    try:
        log_in(without_js, "alice", "alice-password-123")
        page = without_js.page
        page.goto(f"/jobs/{job.id}/")
        page.get_by_label("Your message").fill("which colour is the sky")
        page.get_by_role("button", name="Ask").click()
        page.wait_for_url(f"**/jobs/{job.id}/chat/")
        assert page.locator("#chat-answer").inner_text() == expected
    finally:
        without_js.close()
    assert InferenceUsage.objects.filter(job=job).count() == 2
