"""The web console in a real headless browser (Debian's chromium + chromedriver, Selenium).

Against a running graph (fusion_node, memory_node, knowledge_node, gateway_node, each its own
process): load the page, send a question and watch the streamed tokens arrive (the reply's
text grows before the final event), upload a photo to analyze, upload a document to the
knowledge base, and save a screenshot in the test's tmp dir.
"""

from __future__ import annotations

import shutil
import tempfile
import time

import cv2
import pytest
from conftest import NodeProcess, unique_namespace, wait_for
from gateway_http import GATEWAY, Http, gateway_port
from images import photo

pytestmark = [pytest.mark.ros, pytest.mark.model]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is installed by scripts/bootstrap.sh --dev"
)
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "chromium and chromedriver are absent: apt-get install chromium chromium-driver "
        "(scripts/bootstrap.sh --dev does it)",
        allow_module_level=True,
    )
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture
def console(tmp_path):
    namespace = unique_namespace("console")
    memory_db = tmp_path / "memory.db"
    processes = [
        NodeProcess(
            "smolfusion_ros.nodes.fusion_node",
            namespace,
            params={"memory.database_path": str(memory_db), "llm.temperature": 0.0},
        ),
        NodeProcess(
            "smolfusion_ros.nodes.memory_node", namespace, params={"database_path": str(memory_db)}
        ),
        NodeProcess(
            "smolfusion_ros.nodes.knowledge_node",
            namespace,
            params={
                "database_path": str(tmp_path / "knowledge.db"),
                "persona.database_path": str(tmp_path / "personas.db"),
            },
        ),
    ]
    gateway = NodeProcess(GATEWAY, namespace, params={"port": 0})
    processes.append(gateway)
    port = gateway_port(gateway)
    http = Http(port)
    assert wait_for(lambda: http.get("/health").status == 200, 120, 0.5), gateway.log[-2000:]

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={tempfile.mkdtemp(prefix='smolfusion-chromium-')}",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver, f"http://127.0.0.1:{port}/", tmp_path
    finally:
        driver.quit()
        for process in processes:
            process.stop()


def test_console_streams_an_answer_analyzes_an_upload_and_ingests_a_document(console):
    driver, url, tmp_path = console
    driver.get(url)
    assert "smolfusion console" in driver.title
    # The page fills its pickers from the gateway: personas from knowledge_node.
    assert wait_for(
        lambda: len(driver.find_elements(By.CSS_SELECTOR, "#persona-select option")) >= 4, 30
    )
    assert wait_for(lambda: "ready" in driver.find_element(By.ID, "health").text, 30)

    driver.find_element(By.ID, "chat-input").send_keys("Tell me a long story about a robot.")
    driver.find_element(By.ID, "chat-send").click()
    # Streamed: the reply's text is seen growing while it is still streaming (before the final).
    lengths: list[int] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        replies = driver.find_elements(By.CSS_SELECTOR, "#history .turn.assistant")
        if replies:
            reply = replies[-1]
            classes = reply.get_attribute("class")
            if "streaming" in classes:
                text = reply.find_element(By.CSS_SELECTOR, ".text").text
                if text and (not lengths or len(text) > lengths[-1]):
                    lengths.append(len(text))
            elif "final" in classes or "failed" in classes:
                break
        time.sleep(0.05)
    reply = driver.find_elements(By.CSS_SELECTOR, "#history .turn.assistant")[-1]
    assert "final" in reply.get_attribute("class"), reply.text
    assert len(lengths) >= 2, f"text did not grow while streaming: {lengths}"
    assert "first token" in reply.find_element(By.CSS_SELECTOR, ".meta").text
    assert int(reply.get_attribute("data-batches")) >= 2
    assert "first token at the browser" in driver.find_element(By.ID, "timings").text

    # Image upload to analyze (a real photo with a person).
    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), cv2.cvtColor(photo("astronaut.png"), cv2.COLOR_RGB2BGR))
    driver.find_element(By.ID, "analyze-file").send_keys(str(image))
    driver.find_element(By.ID, "analyze-send").click()
    answer = driver.find_element(By.ID, "analyze-answer")
    assert wait_for(lambda: answer.get_attribute("class") in ("done", "error"), 120)
    assert answer.get_attribute("class") == "done", answer.text
    assert "person" in answer.text.lower() and "uploaded" in answer.text

    # Knowledge upload and list.
    document = tmp_path / "robot-manual.txt"
    document.write_text("The charging dock of the robot is behind the reception desk.\n")
    driver.find_element(By.ID, "knowledge-file").send_keys(str(document))
    driver.find_element(By.ID, "knowledge-upload").click()
    assert wait_for(
        lambda: "robot-manual.txt" in driver.find_element(By.ID, "knowledge-list").text, 60
    ), driver.find_element(By.ID, "knowledge-status").text

    # The session picker shows the conversation stored by memory_node.
    driver.refresh()
    assert wait_for(
        lambda: "Tell me a long story" in driver.find_element(By.ID, "history").text, 30
    )
    screenshot = tmp_path / "web_console.png"
    driver.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
