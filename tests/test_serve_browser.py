"""The web page in headless Chromium: upload an X-ray, read the answer as a person would.

Playwright drives Debian's `chromium` (its own browser download is unreachable here; `.ci/run`
installs the apt package). Run as a script to redo the README screenshot with a real model:

    python tests/test_serve_browser.py --model runs/mobilenet/version_0/checkpoints/best.ckpt \
        --image ../shared/data/tb-cxr-dev/.../CHNCXR_0336_1.png --out docs/figures/web_page.png
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tbclf.inference import load_predictor  # noqa: E402
from tbclf.serve import create_app  # noqa: E402
from tests.serve_helpers import DEV, dev_images, running_server, train_run, write_png  # noqa: E402

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)


def drive_page(url: str, image: Path, screenshot: Path | None = None) -> dict[str, str]:
    """Open the page, upload `image`, wait for the answer; what the page shows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent.includes('Model')")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("body[data-state='done']", timeout=60_000)
            page.wait_for_function(
                "['input-image', 'cam-image'].every(id => document.getElementById(id).naturalWidth)"
            )
            shown = {
                key: page.text_content(selector) or ""
                for key, selector in {
                    "prob": "#prob",
                    "decision": "#decision",
                    "triage": "#triage",
                    "model": "#model",
                }.items()
            }
            shown["bar"] = page.eval_on_selector("#bar-fill", "e => e.style.width")
            shown["error_hidden"] = str(page.eval_on_selector("#error", "e => e.hidden"))
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return shown


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("browser"), "simple")


def _dev_image() -> Path:
    return dev_images(1)[0]


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium here: install Debian's chromium (`apt-get install -y chromium`, as "
    ".ci/run does); Playwright's own browser download is unreachable",
)
@pytest.mark.parametrize(
    "source",
    [
        "synthetic",
        pytest.param(
            "dev",
            marks=[
                pytest.mark.devset,
                pytest.mark.skipif(not DEV.is_dir(), reason=f"dev set not present at {DEV}"),
            ],
        ),
    ],
)
def test_page_shows_the_apis_probability(model, tmp_path, source):
    image = write_png(tmp_path / "xray.png", 300, 260) if source == "synthetic" else _dev_image()
    predictor = load_predictor(model)
    with running_server(create_app(predictor)) as url:
        with image.open("rb") as handle:
            api = httpx.post(f"{url}/predict", files={"file": (image.name, handle)}, timeout=60)
        assert api.status_code == 200
        answer = api.json()
        shot = tmp_path / "web_page.png"
        shown = drive_page(url, image, shot)
    assert shown["prob"] == f"{answer['prob_tb']:.3f}"
    assert shown["decision"] == ("TB suspected" if answer["tb_suspected"] else "TB not suggested")
    assert shown["triage"] == answer["triage"]
    assert shown["bar"] == f"{100 * answer['prob_tb']:.1f}%"
    assert shown["error_hidden"] == "True" and "simple/version_0" in shown["model"]
    assert shot.stat().st_size > 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description="Screenshot of the page for the README.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--out", default="docs/figures/web_page.png")
    args = parser.parse_args()
    with running_server(create_app(load_predictor(args.model))) as url:
        print(drive_page(url, Path(args.image), Path(args.out)))


if __name__ == "__main__":
    main()
