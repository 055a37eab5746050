"""Open a Snakemake HTML report in headless Chromium (Debian's /usr/bin/chromium driven by Playwright) and
walk it like a reader: every category and subcategory page lists its results, and every figure opens and
decodes. Returns what was checked, so a test can assert that nothing was skipped."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def walk_report(report: Path, executable: str) -> dict:
    from playwright.sync_api import sync_playwright

    checked = {"pages": [], "figures": [], "errors": []}
    url = Path(report).resolve().as_uri()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("pageerror", lambda error: checked["errors"].append(str(error)))
        page.on("console", lambda message: message.type == "error" and checked["errors"].append(message.text))
        page.goto(url)
        page.wait_for_function("document.querySelector('#loading-screen').style.display === 'none'")
        categories = page.evaluate("categories")
        results = page.evaluate("Object.fromEntries(Object.entries(results).map(([k, v]) => [k, v.mime_type]))")
        labels = page.evaluate("Object.fromEntries(Object.entries(results).map(([k, v]) => [k, v.labels]))")
        for category, subcategories in categories.items():
            for subcategory, paths in subcategories.items():
                page.goto(url)
                page.get_by_text(category, exact=True).first.click()
                if len(subcategories) > 1:
                    page.get_by_text(subcategory, exact=True).first.click()
                for path in paths:
                    # Results with labels are listed as a table of their label values (labels with few values
                    # become toggle buttons above it), others by path.
                    if labels[path]:
                        row = page.locator("tr")
                        for key, value in labels[path].items():
                            toggle = page.locator(f"label[for='toggle-{key}-{value}']")
                            if toggle.count():
                                toggle.first.click()
                            else:
                                row = row.filter(has=page.get_by_role("cell", name=str(value), exact=True))
                    else:
                        row = page.locator("tr", has_text=path)
                    row = row.first
                    row.wait_for(state="visible", timeout=10_000)
                    if results[path] == "image/png":
                        row.locator("a[iconname=eye]").click()
                        name = Path(path).name
                        # The figure is shown as a data URI image: wait until it has decoded.
                        page.wait_for_function(
                            "name => Array.from(document.images).some(i => i.src.startsWith('data:image/png') && "
                            "i.src.includes('filename=' + name) && i.complete && i.naturalWidth > 0)",
                            arg=name, timeout=10_000)
                        checked["figures"].append(path)
                checked["pages"].append(f"{category} / {subcategory}")
        browser.close()
    checked["results"] = results
    return checked
