"""A JupyterLab server on a temporary copy of notebooks/, and Debian's chromium driven by
Playwright, for the real-browser test. Both are cleaned up even when a test fails. `make test`
installs chromium where it may (tools/ensure-chromium.sh); where it could not, the tests skip
and say why, except under CI (CI=1, set by .ci/run), where a missing chromium or playwright
fails them."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tools.book import NOTEBOOKS, ROOT

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing that reaches for the network or a GPU (this sandbox has no internet).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "artifacts" / "browser"
SERVER_START_SECONDS = 90
SERVER_STOP_SECONDS = 20


class JupyterLab:
    """A JupyterLab server started for the tests: its URL, token and notebook folder."""

    def __init__(self, root, log_path):
        self.root = root
        self.token = secrets.token_hex(16)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # Private Jupyter and IPython folders: no user settings, kernels or workspaces leak in,
        # and nothing is written to the user's own.
        home = root.parent / "jupyter-home"
        env = os.environ | {
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_DATA_DIR": str(home / "data"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
            "IPYTHONDIR": str(home / "ipython"),
        }
        # No news or update prompt: it would fetch from the internet and cover the screenshots.
        settings = home / "config/lab/user-settings/@jupyterlab/apputils-extension/notification.jupyterlab-settings"
        settings.parent.mkdir(parents=True)
        settings.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        # setpriv (util-linux): if pytest is killed outright, Linux sends the server SIGTERM, so
        # it never outlives the run; its kernels follow their parent.
        command = [
            "setpriv", "--pdeathsig", "TERM", "--",
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            f"--ServerApp.token={self.token}",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={root}",
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")
        self.log = open(log_path, "w")  # noqa: SIM115 -- the server writes it until stop() closes it
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=root)

    def api(self, path, method="GET"):
        request = urllib.request.Request(
            f"{self.url}/api/{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def wait_until_ready(self):
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"JupyterLab exited with status {self.process.returncode}; see {self.log.name}")
            try:
                self.api("status")
                return
            except OSError:  # refused, reset or not yet answering
                time.sleep(0.25)
        pytest.fail(f"JupyterLab did not answer within {SERVER_START_SECONDS} s; see {self.log.name}")

    def shutdown_kernels(self):
        for kernel in self.api("kernels"):
            self.api(f"kernels/{kernel['id']}", method="DELETE")

    def stop(self):
        """Shut down kernels and server politely; terminate, then kill, if it does not go."""
        if self.process.poll() is None:
            try:
                self.shutdown_kernels()
                self.api("shutdown", method="POST")
                self.process.wait(timeout=SERVER_STOP_SECONDS)
            except (OSError, subprocess.TimeoutExpired):
                self.process.terminate()
                try:
                    self.process.wait(timeout=SERVER_STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        self.log.close()


@pytest.fixture(scope="session")
def artifacts():
    """Screenshots and the server's log land here (gitignored), kept after the run."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def jupyterlab(tmp_path_factory, artifacts):
    """JupyterLab serving a copy of notebooks/, so the repository's files are never modified."""
    root = tmp_path_factory.mktemp("book") / "notebooks"
    shutil.copytree(NOTEBOOKS, root)
    server = JupyterLab(root, artifacts / "jupyterlab.log")
    try:
        server.wait_until_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        missing = f"{CHROMIUM} is missing: `sudo apt-get install chromium` (make test does it when run as root)"
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: `pip install -e '.[test]'` (never `playwright install`)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so that `page` knows whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(request, browser, jupyterlab, artifacts):
    """A fresh browser tab; a screenshot if the test fails; the test's kernels shut down after."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        yield page
    finally:
        try:
            report = getattr(request.node, "report_call", None)
            if report is not None and report.failed:
                page.screenshot(path=artifacts / f"{request.node.name}-failure.png")
        finally:
            context.close()
            jupyterlab.shutdown_kernels()
