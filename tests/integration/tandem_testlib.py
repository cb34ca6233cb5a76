"""Helpers shared by the Python integration tests (imported, not run)."""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

failures = []


def use_test_venv():
    """Re-runs the calling script under TANDEM_TEST_PYTHON (build/venv-test,
    which has the openai SDK) when that is not the current interpreter."""
    py = os.environ.get("TANDEM_TEST_PYTHON")
    venv = os.path.dirname(os.path.dirname(py)) if py else None
    if venv and os.path.exists(py) and os.path.realpath(sys.prefix) != os.path.realpath(venv):
        os.execv(py, [py] + sys.argv)


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f": {str(detail)[:600]}"))
    if not cond:
        failures.append(name)


def finish():
    print(f"{len(failures)} failures")
    sys.exit(1 if failures else 0)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def request(port, method, path, body=None, timeout=60):
    """One HTTP request on a fresh connection: (status, raw body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, path, json.dumps(body) if body is not None else None,
              {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def stop_procs(procs, timeout=15):
    """SIGTERM every process still running, then reap each within timeout
    seconds (SIGKILL after that)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_for(pred, seconds):
    end = time.time() + seconds
    while time.time() < end:
        try:
            if pred():
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def wait_ready(port, seconds=30):
    return wait_for(lambda: request(port, "GET", "/ready", timeout=2)[0] == 200, seconds)
