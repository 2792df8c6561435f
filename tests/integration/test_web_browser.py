"""The dashboard in headless Debian chromium (Playwright drives it): log in, see the
clouds, disable and enable with the button, watch a worker appear and the pool's
charts follow, log out. Saves docs/dashboard.png, docs/pool-over-time.png and docs/login.png."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect

from . import ops_support
from .ops_support import job

pytestmark = pytest.mark.timeout(300)

CHROMIUM = os.environ.get("APPLIANCE_CHROMIUM", "/usr/bin/chromium")
DOCS = Path(__file__).resolve().parents[2] / "docs"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def app(client, image, tmp_path_factory):
    a = ops_support.start(client, image, tmp_path_factory.mktemp("browser"), "web")
    yield a
    ops_support.stop(a)


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: ./run-tests installs Debian's chromium")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    # the appliance's self-signed certificate names no container address (test_web_api.py verifies it)
    ctx = browser.new_context(viewport={"width": 1440, "height": 900}, device_scale_factor=1, ignore_https_errors=True)
    pg = ctx.new_page()
    problems: list[str] = []
    # a wrong password is answered 401, which the console notes: not a problem of the page
    pg.on("console", lambda m: problems.append(m.text)
          if m.type == "error" and "status of 401" not in m.text else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    yield pg
    ctx.close()
    assert not problems, problems        # no CSP violation, no script error


def login(app, page) -> None:
    assert app.url.startswith("https://")
    page.goto(f"{app.url}/login")
    page.fill("input[name=password]", app.password)
    page.click("button[type=submit]")
    page.wait_for_selector("#clouds")


def test_login_required_and_wrong_password(app, page):
    page.goto(f"{app.url}/")
    assert page.url.endswith("/login")
    page.fill("input[name=password]", "not-the-password")
    page.click("button[type=submit]")
    assert page.locator(".alert.error").inner_text() == "Wrong user name or password."
    page.screenshot(path=str(DOCS / "login.png"))


def test_dashboard_disable_enable_worker_logout(app, page):
    login(app, page)
    rows = page.locator("#clouds tbody tr")
    assert rows.count() == 2
    assert page.locator('tr[data-cloud="local"] [data-health]').inner_text() == "ok"
    assert page.locator('tr[data-cloud="burst"] [data-health]').inner_text() == "disabled"

    # disable local with its button: the page updates itself, the CLI agrees
    page.click('button[aria-label="Disable local"]')
    page.wait_for_selector('button[aria-label="Enable local"]')
    assert page.locator('tr[data-cloud="local"] [data-health]').inner_text() == "disabled"
    assert app.cloud("local")["enabled"] is False
    page.click('button[aria-label="Enable local"]')
    page.wait_for_selector('button[aria-label="Disable local"]')
    assert app.cloud("local")["enabled"] is True

    # max_workers through its field
    page.fill('input[aria-label="max workers for burst"]', "3")
    page.click('tr[data-cloud="burst"] form.inline button')
    expect(page.locator("#toast")).to_contain_text("burst: max_workers set to 3")
    assert app.cloud("burst")["max_workers"] == 3

    # reload the configuration from its button, saying why: the scheduler's answer in the toast,
    # the reason in its event
    page.fill("#comment", "checking the reload button")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[data-reload]")
    expect(page.locator("#toast")).to_contain_text("reloaded ")
    assert any(e["reason"].startswith('configuration reloaded by web page: "checking the reload button": ')
               for e in app.events())
    assert app.cloud("burst")["max_workers"] == 3          # the setting made on the page is kept
    page.fill("#comment", "")

    # submit jobs: workers appear without a reload
    navigations: list[str] = []
    page.on("framenavigated", lambda f: navigations.append(f.url) if f == page.main_frame else None)
    app.submit(job(3, 45), directory="/home/submit/web")
    app.submit(job(1, 45, "request_memory = 64000"), directory="/home/submit/big")
    expect(page.locator("#workers [data-state]")).to_have_text(["busy", "busy"], timeout=90_000)
    assert navigations == []                        # it refreshed itself: no reload
    ids = page.locator("#workers tr[data-worker]").evaluate_all("rs => rs.map(r => r.dataset.worker)")
    assert all(re.fullmatch(r"local-[0-9a-f]{6}", i) for i in ids) and len(ids) == 2
    page.wait_for_selector("#queue .q-unschedulable")

    # the pool over time: the charts follow the refresh, fed by the scheduler's samples
    jobs = page.locator('#history [data-chart="jobs"]')
    expect(jobs.locator('li[data-series="running jobs"] b')).not_to_have_text("0", timeout=30_000)
    assert jobs.locator('polyline[data-series="running jobs"]').count() >= 1
    assert jobs.locator('polyline[data-series="idle jobs"]').first.get_attribute("points").count(",") >= 2
    assert page.locator('#history [data-chart="clouds"] polyline[data-series="local"]').count() >= 1
    assert page.locator('#history [data-chart="states"] li[data-series="busy"] b').inner_text() != "0"
    assert page.locator("#history svg").count() == 3           # no price configured: no spend chart
    # the same series from the API, with the page's session
    data = page.request.get(f"{app.url}/api/history").json()["data"]
    assert data["times"] and max(v or 0 for v in data["running_jobs"]) >= 1
    assert max(v or 0 for v in data["workers_by_cloud"]["local"]) == 2 and data["spend_per_hour"] is None

    page.wait_for_timeout(1500)      # a pause for the screenshot only: nothing is asserted on it
    page.screenshot(path=str(DOCS / "dashboard.png"), full_page=True)
    page.locator("#history").screenshot(path=str(DOCS / "pool-over-time.png"))

    # log out: back to the login page, and the dashboard is closed again
    page.click("text=Log out")
    page.wait_for_url(re.compile(r".*/login$"))
    page.goto(f"{app.url}/")
    assert page.url.endswith("/login")
    app.sh("condor_rm -all", user="submit")


def test_requests_without_csrf_token_are_refused(app, page):
    login(app, page)
    # over HTTPS the browser keeps the session cookie as Secure (never sent in clear)
    cookie = next(c for c in page.context.cookies() if c["name"] == "appliance_session")
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    # the browser's session cookie alone is not enough
    for url in ("/clouds/local/disable", "/api/clouds/local/disable"):
        r = page.request.post(f"{app.url}{url}", headers={"X-Requested-With": "fetch"})
        assert r.status == 403 and "CSRF" in r.json()["error"], url
        r = page.request.post(f"{app.url}{url}", form={"csrf_token": "forged"}, headers={"X-Requested-With": "fetch"})
        assert r.status == 403, url
    r = page.request.post(f"{app.url}/logout")
    assert r.status == 401 or r.status == 403
    assert app.cloud("local")["enabled"] is True
    # with the token, the same session may
    r = page.request.post(f"{app.url}/api/clouds/burst/enable", headers={"X-CSRF-Token": token})
    assert r.status == 200 and r.json()["data"]["enabled"] is True
    r = page.request.post(f"{app.url}/api/clouds/burst/disable", headers={"X-CSRF-Token": token})
    assert r.status == 200
    # the page's form checks numbers on the server too (the browser's own check aside)
    r = page.request.post(f"{app.url}/clouds/burst/max_workers", form={"csrf_token": token, "max_workers": "x"},
                          headers={"X-Requested-With": "fetch"})
    assert r.status == 400 and r.json()["error"] == "max_workers must be a whole number >= 0, got 'x'"
    # a login form without the token is refused too
    ctx = page.context.browser.new_context(ignore_https_errors=True)
    r = ctx.request.post(f"{app.url}/login", form={"username": "admin", "password": app.password})
    assert r.status == 400
    ctx.close()
