"""The web page at `/` in headless Chromium (Debian `chromium`, installed by scripts/install_browser.sh), driven by
Playwright against the server with a fake ChatService. Saves a screenshot to artifacts/web_chat.png."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from minicpmv.serve import ServerConfig
from minicpmv.serve.openai_server import create_app
from test_media_fetch import png_bytes, video_bytes
from test_server import FakeChatService, ServerThread

CHROMIUM = Path(os.environ.get("MINICPMV_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]

# Pastes a 20x10 PNG drawn on a canvas into the prompt box, as a clipboard paste would.
PASTE_IMAGE = """async () => {
  const canvas = document.createElement('canvas');
  canvas.width = 20; canvas.height = 10;
  canvas.getContext('2d').fillRect(0, 0, 20, 10);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
  const data = new DataTransfer();
  data.items.add(new File([blob], 'pasted.png', {type: 'image/png'}));
  document.getElementById('prompt').dispatchEvent(
    new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
}"""

# Records every distinct text the newest answer shows, to prove the answer arrives in pieces.
WATCH_ANSWERS = """() => {
  window.seen = [];
  new MutationObserver(() => {
    const answers = document.querySelectorAll('.msg.assistant .answer');
    const t = answers.length ? answers[answers.length - 1].textContent : '';
    if (t && window.seen[window.seen.length - 1] !== t) window.seen.push(t);
  }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: run scripts/install_browser.sh (apt-get install chromium) for the web test")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the python package only)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield browser
        browser.close()


def test_chat_with_uploaded_and_pasted_images_video_streaming_and_thinking(browser, tmp_path):
    service = FakeChatService(delay=0.03)
    image = tmp_path / "red.png"
    image.write_bytes(png_bytes((64, 48)))
    video = tmp_path / "clip.mp4"
    video.write_bytes(video_bytes())
    with ServerThread(create_app(service, ServerConfig())) as srv:
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        page.goto(srv.url + "/")
        page.wait_for_function("document.getElementById('model').textContent === 'fake-minicpmv'")
        page.evaluate(WATCH_ANSWERS)

        page.set_input_files("#image-input", str(image))
        page.evaluate(PASTE_IMAGE)
        page.wait_for_function("document.querySelectorAll('#attachments img').length === 2")
        page.fill("#prompt", "what colour is this square")
        page.click("#send")
        answer = page.locator(".msg.assistant .answer").last
        answer.wait_for()
        page.wait_for_function("document.querySelector('.msg.assistant .answer').textContent"
                               " === 'echo: what colour is this square'")
        assert len(page.evaluate("window.seen")) >= 3, "the answer should appear token by token"
        page.wait_for_selector("#send:not([disabled])")
        assert "completion tokens" in page.locator(".stats").last.text_content()
        assert page.locator(".msg.user img").count() == 2
        first_call = service.calls[-1]
        assert first_call["enable_thinking"] is False
        assert [p["image"].size for p in first_call["messages"][0]["content"][:2]] == [(64, 48), (20, 10)]

        page.check("#thinking")
        page.set_input_files("#video-input", str(video))
        page.wait_for_selector("#attachments video")
        page.fill("#prompt", "and how many are there")
        page.press("#prompt", "Enter")
        page.wait_for_function("[...document.querySelectorAll('.msg.assistant .answer')].length === 2 &&"
                               " document.querySelectorAll('.msg.assistant .answer')[1].textContent"
                               " === 'echo: and how many are there'")
        page.wait_for_selector("#send:not([disabled])")
        reasoning = page.locator(".msg.assistant .reasoning").last
        assert reasoning.is_visible() and reasoning.get_attribute("open") is None, "reasoning shown folded"
        assert "looking at 2 images" in reasoning.text_content()
        second_call = service.calls[-1]
        assert second_call["enable_thinking"] is True
        assert [m["role"] for m in second_call["messages"]] == ["user", "assistant", "user"]
        assert second_call["messages"][2]["content"][0]["type"] == "video"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web_chat.png"), full_page=True)
        page.close()
    assert (ARTIFACTS / "web_chat.png").stat().st_size > 0
