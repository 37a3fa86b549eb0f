"""The page at `/`, used the way a person uses it: in a real Chromium (Debian's, driven by Selenium) against
the real service serving the bundled model. Every test also checks that no request left 127.0.0.1 and that
the browser printed no console error beyond the HTTP errors the test provoked on purpose.

Screenshots at desktop and phone width go to runs/screenshots/ (docs/ has the committed ones)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from bench.attacks import running_service
from bench.photos import product_photo
from core.datasets import Dataset, find_fashion_mnist
from core.metadata import ModelMetadata
from core.store import ModelStore
from tests.helpers import BUNDLED_STORE, REPO, require_tool

pytestmark = pytest.mark.slow
SCREENSHOTS = REPO / "runs" / "screenshots"
DESKTOP, PHONE = (1280, 900), (390, 844)
API_KEY = "page-test-key-7f3a"


@dataclass
class Page:
    """A browser tab on one server, with what it logged since the last check."""

    driver: webdriver.Chrome
    url: str
    expected_statuses: set[int] = field(default_factory=set)

    def open(self, size: tuple[int, int] = DESKTOP, path: str = "/") -> None:
        """Opens a page of this server on a clean slate: what an earlier tab (maybe another server's, still
        polling when it was left) logged is not this tab's."""
        self.driver.get("about:blank")
        self.driver.get_log("performance")
        self.driver.get_log("browser")
        self.driver.set_window_size(*size)
        self.driver.get(self.url + path)
        if path != "/":
            return
        self.wait(lambda: "version" in self.find("#served").text)

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait(self, condition: object, timeout_s: float = 30) -> object:
        return WebDriverWait(self.driver, timeout_s).until(lambda _: condition())  # type: ignore[operator]

    def upload(self, *paths: Path) -> None:
        self.find("#files").send_keys("\n".join(str(path) for path in paths))

    def newest_card(self) -> WebElement:
        return self.find("#results > li:first-child")

    def outcome(self) -> str:
        """The newest result once it has one: its top class, or its error message."""

        def settled() -> str | None:
            card = self.newest_card()
            found = card.find_elements(By.CSS_SELECTOR, ".top-class, .note.error")
            return found[0].text if found else None

        return str(self.wait(settled))

    def check_logs(self) -> None:
        """No request to anything but this server; no console error but the expected HTTP ones."""
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                url = message["params"]["request"]["url"]
                assert url.startswith((self.url + "/", "data:", "blob:")), f"a request left the server: {url}"
        for entry in self.driver.get_log("browser"):
            if entry["level"] != "SEVERE":
                continue
            expected = entry["source"] == "network" and any(
                f"status of {status}" in entry["message"] for status in self.expected_statuses
            )
            assert expected, f"console error: {entry['message']}"


@pytest.fixture(scope="module")
def driver() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = require_tool("chromium", "apt-get install -y chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    chrome = webdriver.Chrome(
        options=options, service=Service(require_tool("chromedriver", "apt-get install -y chromium-driver"))
    )
    try:
        yield chrome
    finally:
        chrome.quit()


def _serve(env: dict[str, str]) -> Iterator[str]:
    with running_service({"MODEL_STORE": str(BUNDLED_STORE), **env}) as (port, _):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(real_dataset: Dataset) -> Iterator[str]:
    yield from _serve({"FASHION_MNIST_DIR": str(find_fashion_mnist())})


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[str]:
    yield from _serve({"API_KEY": API_KEY})


@pytest.fixture
def page(driver: webdriver.Chrome, server: str) -> Iterator[Page]:
    tab = Page(driver, server)
    tab.open()
    yield tab
    tab.check_logs()


@pytest.fixture(scope="module")
def files(real_dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test-set ankle boot as its own 28x28 PNG, a product photo (JPEG) of a test-set trouser, text."""
    folder = tmp_path_factory.mktemp("uploads")
    assert real_dataset.test is not None
    images, labels = real_dataset.test.images, real_dataset.test.labels
    boot = folder / "ankle-boot.png"
    Image.fromarray(images[int(np.flatnonzero(labels == 9)[0])]).save(boot)
    trouser = images[int(np.flatnonzero(labels == 1)[0])]
    rng = np.random.default_rng(7)
    photo = product_photo(trouser, rng)
    while photo.content_type != "image/jpeg":
        photo = product_photo(trouser, rng)
    jpeg = folder / "trouser-photo.jpg"
    jpeg.write_bytes(photo.data)
    text = folder / "notes.txt"
    text.write_text("not an image, just some words\n")
    return {"boot": boot, "photo": jpeg, "text": text}


def test_an_uploaded_png_shows_its_class_what_the_model_saw_and_every_probability(
    page: Page, files: dict[str, Path]
) -> None:
    page.upload(files["boot"])
    assert page.outcome() == "Ankle boot"
    card = page.newest_card()
    seen = card.find_element(By.CSS_SELECTOR, "img.seen")
    assert page.driver.execute_script("return arguments[0].naturalWidth", seen) == 28
    rows = card.find_elements(By.CSS_SELECTOR, ".bars li")
    assert len(rows) == 10 and rows[9].text.startswith("Ankle boot")
    assert "Looks like the items the model was trained on" in card.text


def test_a_product_photo_gets_its_class(page: Page, files: dict[str, Path]) -> None:
    page.upload(files["photo"])
    assert page.outcome() == "Trouser"


def test_several_images_at_once_each_get_their_own_card(page: Page, files: dict[str, Path]) -> None:
    page.expected_statuses.add(422)
    page.upload(files["boot"], files["text"], files["photo"])
    page.wait(lambda: len(page.find_all("#results .top-class, #results .note.error")) == 3)
    cards = {
        card.find_element(By.CSS_SELECTOR, ".name").text.split(" ·")[0]: card
        for card in page.find_all("#results > li")
    }
    assert "Ankle boot" in cards["ankle-boot.png"].text
    assert "Trouser" in cards["trouser-photo.jpg"].text
    assert "not a recognised image" in cards["notes.txt"].text


def test_a_drawing_on_the_canvas_gets_a_prediction(page: Page) -> None:
    canvas = page.find("#canvas")
    strokes = ActionChains(page.driver).move_to_element_with_offset(canvas, -40, -70).click_and_hold()
    for dx, dy in ((80, 0), (0, 140), (-80, 0), (0, -140)):  # a tall rectangle, like a dress or trousers
        strokes = strokes.move_by_offset(dx, dy)
    strokes.release().perform()
    page.find("#classify-drawing").click()
    assert page.outcome() in page.driver.execute_script("return state.classNames")
    seen = page.newest_card().find_element(By.CSS_SELECTOR, "img.seen")
    assert page.driver.execute_script("return arguments[0].naturalWidth", seen) == 28


def test_a_text_file_gets_a_readable_error_next_to_it(page: Page, files: dict[str, Path]) -> None:
    page.expected_statuses.add(422)
    page.upload(files["text"])
    message = page.outcome()
    assert (
        message.startswith("This input cannot be classified (422)") and "not a recognised image" in message
    ), message
    assert "notes.txt" in page.newest_card().text


def bundled() -> tuple[int, ModelMetadata]:
    """The bundled store's current version and its metadata: what the page must show."""
    store = ModelStore(BUNDLED_STORE, "fashion-mnist")
    version = store.current_version()
    assert version is not None
    return version, store.read_metadata(version)


def percent(fraction: float) -> str:
    """As the page writes a share: 89.92 %."""
    return f"{fraction * 100:.2f} %"


def test_the_model_tab_shows_the_versions_metrics_figures_and_the_store(page: Page) -> None:
    page.find("#tab-model").click()
    page.wait(lambda: page.find_all("#model-info table"))
    info = page.find("#model-info").text
    version, meta = bundled()
    assert meta.test and meta.validation and meta.calibration
    assert f"fashion-mnist, version {version} (onnx)" in info
    assert f"Test accuracy\n{percent(meta.test.accuracy)}" in info
    assert f"Validation accuracy\n{percent(meta.validation.accuracy)}" in info
    assert f"temperature {meta.calibration.temperature:.3f}" in info
    # The recipe, and the teacher that taught the served MLP (the bundled version is distilled).
    assert f"{meta.training['recipe']} recipe, Dense 448→128 (relu), taught by a CNN (12 epochs" in info
    for figure in page.find_all("#model-info .figures img"):
        page.wait(
            lambda figure=figure: page.driver.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth", figure
            )
        )
    assert len(page.find_all("#model-info .figures img")) == 2
    rows = [row.text for row in page.find_all("#model-info tbody tr")]
    assert [row.split()[0] for row in rows] == [str(v) for v in range(1, version + 1)]
    assert rows[-1].endswith("served, promoted") and not rows[0].endswith("promoted")


def test_evaluate_shows_accuracy_per_class_metrics_and_the_confusion_matrix(page: Page) -> None:
    page.find("#tab-evaluate").click()
    page.find("#evaluate").click()
    page.wait(lambda: page.find_all("#confusion"), timeout_s=120)
    test = bundled()[1].test
    assert test is not None and f"Accuracy\n{percent(test.accuracy)}" in page.find("#evaluation").text
    rows = page.find_all("#confusion tbody tr")
    assert len(rows) == 10
    counts = [[int(cell.text) for cell in row.find_elements(By.CSS_SELECTOR, "td")] for row in rows]
    assert sum(map(sum, counts)) == 10_000 and counts[1][1] > 900  # trousers are rarely mistaken
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.driver.execute_script("arguments[0].scrollIntoView()", page.find("#evaluation"))
    page.driver.save_screenshot(str(SCREENSHOTS / "page-evaluate.png"))


def test_the_live_tab_draws_the_traffic(page: Page, files: dict[str, Path]) -> None:
    page.find("#tab-live").click()
    page.find("#tab-try").click()
    page.upload(files["boot"])
    page.outcome()
    page.find("#tab-live").click()
    page.wait(lambda: page.find("#live-rate").text.endswith("/s"))
    page.wait(lambda: "Ankle boot" in page.find("#live-classes").text)


def test_with_an_api_key_the_page_asks_for_it_and_says_when_it_is_wrong(
    driver: webdriver.Chrome, keyed_server: str, files: dict[str, Path]
) -> None:
    page = Page(driver, keyed_server, expected_statuses={401})
    page.open()
    page.upload(files["boot"])
    dialog = page.find("#key-dialog")
    page.wait(lambda: dialog.get_attribute("open") is not None)
    assert "needs an API key" in page.find("#key-message").text
    page.find("#key").send_keys("wrong-key")
    page.find("#key-submit").click()
    page.wait(
        lambda: "not accepted" in page.find("#key-message").text and dialog.get_attribute("open") is not None
    )
    page.find("#key").send_keys(API_KEY)
    page.find("#key-submit").click()
    assert page.outcome() == "Ankle boot"
    assert driver.execute_script("return sessionStorage.getItem('fashion-serving-api-key')") == API_KEY
    page.check_logs()


def test_screenshots_at_desktop_and_phone_width(page: Page, files: dict[str, Path]) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.open(size)
        page.upload(files["photo"])
        page.outcome()
        page.upload(files["boot"])
        page.outcome()
        assert page.driver.execute_script("return document.documentElement.scrollWidth") <= size[0]
        page.driver.save_screenshot(str(SCREENSHOTS / f"page-{name}.png"))
    page.find("#tab-model").click()
    page.wait(lambda: page.find_all("#model-info table"))
    page.driver.save_screenshot(str(SCREENSHOTS / "page-phone-model.png"))


def test_the_page_is_small_and_served_with_a_policy_that_allows_only_this_server(server: str) -> None:
    page = httpx.get(server + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assets = [httpx.get(f"{server}/ui/{name}") for name in ("app.js", "app.css")]
    assert all(asset.status_code == 200 for asset in assets)
    assert len(page.content) + sum(len(asset.content) for asset in assets) <= 100 * 1024
    again = httpx.get(server + "/", headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304
    assert httpx.get(f"{server}/ui/secrets.py").status_code == 404


def test_the_api_documentation_renders_from_this_server_alone(driver: webdriver.Chrome, server: str) -> None:
    # Swagger UI ships in a package: /docs works on a machine without internet, under a strict policy.
    tab = Page(driver, server)
    tab.open(path="/docs")
    tab.wait(lambda: len(tab.find_all(".opblock-summary-path")) > 10)
    paths = {element.text.replace("\u200b", "") for element in tab.find_all(".opblock-summary-path")}
    assert {"/predict", "/v2/models/{name}/infer"} <= paths
    tab.check_logs()
