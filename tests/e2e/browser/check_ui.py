"""Opens the MLflow UI and a run's TensorBoard link through nginx in a real browser, logging in
at the browser's Basic-auth prompt as a person would, and reports what the pages showed.

    check_ui.py BASE_URL USER PASSWORD EXPERIMENT RUN_PAGE RUN_NAME TENSORBOARD_LINK SHOWN_RUN
                HIDDEN_RUN OUT_DIR

RUN_PAGE is a run's page in the MLflow UI (`#/experiments/<id>/runs/<run id>`), which must show
RUN_NAME. The link is the run's TensorBoard link (its experiment's TensorBoard, filtered to
SHOWN_RUN): SHOWN_RUN must be listed, HIDDEN_RUN (another run of the same experiment) not.
Anything the pages' Content-Security-Policy refused is reported.
"""

import json
import sys

from playwright.sync_api import sync_playwright

(base, user, password, experiment, run_page, run_name, tb_link, shown_run, hidden_run,
 out) = sys.argv[1:]
report: dict = {"errors": [], "csp_violations": []}

with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path="/usr/bin/chromium",
        args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--disable-quic"])
    # The certificate is checked by the client tests with the CA file; here the page matters.
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900},
                                  http_credentials={"username": user, "password": password})
    page = context.new_page()
    page.on("response", lambda r: report["errors"].append(f"{r.status} {r.url}")
            if r.status >= 400 else None)
    page.on("console", lambda m: report["csp_violations"].append(m.text)
            if "Content Security Policy" in m.text or "Content-Security-Policy" in m.text
            else None)

    page.goto(f"{base}/#/experiments")
    try:
        page.get_by_text(experiment).first.wait_for(timeout=60_000)
        report["mlflow_lists_experiment"] = True
    except Exception as exc:  # noqa: BLE001 - reported, the test asserts on it
        report["mlflow_lists_experiment"] = f"{exc}"
    page.screenshot(path=f"{out}/mlflow.png")

    page.goto(f"{base}/{run_page}")
    try:
        page.get_by_text(run_name).first.wait_for(timeout=60_000)
        page.wait_for_timeout(2000)  # the run's charts and artifacts load
        report["mlflow_shows_run"] = True
    except Exception as exc:  # noqa: BLE001
        report["mlflow_shows_run"] = f"{exc}"
    page.screenshot(path=f"{out}/mlflow-run.png")

    page.goto(tb_link)
    try:
        page.get_by_text(shown_run).first.wait_for(timeout=60_000)
        report["tensorboard_lists_run"] = True
    except Exception as exc:  # noqa: BLE001
        report["tensorboard_lists_run"] = f"{exc}"
    page.wait_for_timeout(3000)  # the charts settle
    hidden = page.get_by_text(hidden_run).count()
    report["tensorboard_hides_other_runs"] = True if hidden == 0 else f"{hidden} mentions"
    page.screenshot(path=f"{out}/tensorboard.png")

    # The same browser with a wrong password gets no page.
    wrong = browser.new_context(ignore_https_errors=True,
                                http_credentials={"username": user, "password": "wrong-password"})
    report["wrong_password_status"] = wrong.new_page().goto(f"{base}/").status
    browser.close()

print(json.dumps(report))
