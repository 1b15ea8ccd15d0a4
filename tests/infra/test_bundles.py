"""Function bundles: the layout infra/package.py builds is the one Terraform uploads.

* the layout (main.py, requirements.txt, bqgate/, policy.yaml at the root; no
  bqgate/dev, no tests, no caches), checked on a stand-in function folder so it
  runs before the real functions exist, and on every real one that does;
* Terraform's own file list (modules/bundle-files, evaluated by `terraform
  console`) is the same as package.py's;
* every real function (functions/<name>/main.py) unzipped into an empty folder,
  with only its requirements installed in a fresh venv, loads under
  functions-framework and answers a request;
* Pub/Sub push (pubsub.tf) hands a CloudEvent function the same event shape an
  Eventarc trigger would.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / "shared" / "bqgate"
POLICY = REPO / "policies" / "default.yaml"
MODULE = REPO / "infra" / "terraform" / "modules" / "bundle-files"
REAL_FUNCTIONS = sorted(p.parent.name for p in (REPO / "functions").glob("*/main.py"))
# Fed by Pub/Sub push (pubsub.tf). The executor is an HTTP function: it also answers the
# ingress's catalog requests, and reads the push body (the same for both paths) itself.
CLOUDEVENT_FUNCTIONS = {"slack_notify"}


def _load_package() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bqgate_package", REPO / "infra" / "package.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


package = _load_package()


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    """A function folder with the clutter a real one collects."""
    fn = tmp_path / "functions" / "probe"
    for rel, body in {
        "main.py": "def probe(request):\n    return 'ok'\n",
        "requirements.txt": "functions-framework>=3.5\n",
        "helpers/util.py": "X = 1\n",
        "tests/test_main.py": "def test(): pass\n",
        "__pycache__/main.cpython-312.pyc": "",
        "helpers/__pycache__/util.cpython-312.pyc": "",
        "stale.pyc": "",
        ".env": "SECRET=1\n",
    }.items():
        (fn / rel).parent.mkdir(parents=True, exist_ok=True)
        (fn / rel).write_text(body)
    return fn


def _names(zip_path: Path) -> set[str]:
    with zipfile.ZipFile(zip_path) as zf:
        return set(zf.namelist())


def _expected_shared() -> set[str]:
    return {
        "bqgate/" + p.relative_to(SHARED).as_posix()
        for p in SHARED.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix not in {".pyc", ".pyo"}
        and p.relative_to(SHARED).parts[0] != "dev"
        and not any(part.startswith(".") for part in p.relative_to(SHARED).parts)
    }


def _check_layout(names: set[str]) -> None:
    for required in ("main.py", "requirements.txt", "bqgate/__init__.py", "policy.yaml"):
        assert required in names
    assert not [n for n in names if n.startswith(("bqgate/dev/", "tests/"))]
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    assert {n for n in names if n.startswith("bqgate/")} == _expected_shared()


def test_stand_in_bundle_layout(stand_in: Path, tmp_path: Path) -> None:
    out = tmp_path / "probe.zip"
    package.build_bundle(stand_in, out)
    names = _names(out)
    _check_layout(names)
    assert names - _expected_shared() == {
        "main.py",
        "requirements.txt",
        "helpers/util.py",
        "policy.yaml",
    }
    with zipfile.ZipFile(out) as zf:
        assert zf.read("policy.yaml") == POLICY.read_bytes()


def test_bundles_are_reproducible(stand_in: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.zip", tmp_path / "b.zip"
    package.build_bundle(stand_in, a)
    (stand_in / "main.py").touch()
    package.build_bundle(stand_in, b)
    assert a.read_bytes() == b.read_bytes()


def test_a_folder_without_main_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"missing main\.py"):
        package.build_bundle(tmp_path / "empty", tmp_path / "x.zip")


def test_terraform_bundles_the_same_files(stand_in: Path, tmp_path: Path) -> None:
    assert shutil.which("terraform"), "the terraform binary is part of this machine kind"
    module = tmp_path / "module"
    shutil.copytree(MODULE, module, ignore=shutil.ignore_patterns(".terraform*"))
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}

    def terraform(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["terraform", *argv],
            input=stdin,
            cwd=module,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )

    terraform("init", "-input=false", "-backend=false")
    args = [
        f"-var=function_dir={stand_in}",
        f"-var=shared_dir={SHARED}",
        f"-var=policy_file={POLICY}",
    ]
    done = terraform("console", *args, stdin="jsonencode(local.files)\n")

    terraform_files = json.loads(json.loads(done.stdout.strip()))
    ours = package.bundle_files(stand_in, SHARED, POLICY)
    assert terraform_files == {name: str(path) for name, path in ours.items()}


@pytest.mark.parametrize("name", REAL_FUNCTIONS)
def test_package_cli_builds_each_function(name: str, tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "infra" / "package.py"), "--out", str(tmp_path), name],
        check=True,
        timeout=120,
    )
    _check_layout(_names(tmp_path / f"{name}.zip"))


PROBE = r"""
import asyncio, json, sys
import bqgate
from functions_framework import _function_registry, create_app

target = sys.argv[1]
app = create_app(target, "main.py")
kind = _function_registry.get_func_signature_type(target, None)
asgi = not hasattr(app, "test_client")
body = b""
extra = {}
if asgi:  # an ASGI function (functions_framework.aio): one GET / through the ASGI app
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/", "raw_path": b"/",
             "query_string": b"", "headers": [(b"host", b"localhost")],
             "server": ("localhost", 80), "client": ("127.0.0.1", 1)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
elif kind == "http":
    status = app.test_client().get("/").status_code
else:  # not an event: the framework answers 400
    status = app.test_client().post("/", json={}).status_code
if target == "approvals":
    # The console's page, templates and libraries ship in the bundle (not configured here).
    page = app.test_client().get("/console/")
    extra = {"console": [page.status_code, page.get_data(as_text=True)]}
print(json.dumps({"kind": kind, "status": status, "bqgate": bqgate.__file__, "asgi": asgi,
                  "body": body.decode(), **extra}))
"""
#: ASGI functions (functions_framework.aio), with what their health check answers.
ASGI_FUNCTIONS = {"mcp": {"status": "ok", "service": "bqgate-mcp", "endpoint": "/mcp"}}


def install_requirements(env_dir: Path, requirements: Path) -> None:
    """A fresh venv with nothing but ``requirements`` installed: with uv when the test
    environment has it (seconds; it reads the system's CA bundle like pip does), else pip."""
    try:
        from uv import find_uv_bin
    except ImportError:
        venv.create(env_dir, with_pip=True)
        pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "-r", str(requirements)], check=True, timeout=900)
        return
    uv = find_uv_bin()
    env = {**os.environ, "UV_NATIVE_TLS": "1"}
    subprocess.run([uv, "venv", "--quiet", str(env_dir)], check=True, env=env, timeout=300)
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(env_dir / "bin" / "python"),
            "-r",
            str(requirements),
        ],
        check=True,
        env=env,
        timeout=900,
    )


@pytest.mark.parametrize("name", REAL_FUNCTIONS)
def test_bundle_loads_alone_and_answers(name: str, tmp_path: Path) -> None:
    """Unzip into an empty folder, install only its requirements, serve one request."""
    bundle = tmp_path / "bundle"
    package.build_bundle(REPO / "functions" / name, tmp_path / f"{name}.zip")
    with zipfile.ZipFile(tmp_path / f"{name}.zip") as zf:
        zf.extractall(bundle)
    env_dir = tmp_path / "venv"
    python = env_dir / "bin" / "python"
    install_requirements(env_dir, bundle / "requirements.txt")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "BQGATE_PROJECT": "bundle-test",
        "BQGATE_POLICY": "policy.yaml",
    }
    done = subprocess.run(
        [str(python), "-c", PROBE, name],
        cwd=bundle,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result["bqgate"]).resolve().is_relative_to(bundle.resolve())
    assert result["kind"] == ("cloudevent" if name in CLOUDEVENT_FUNCTIONS else "http")
    assert result["status"] == (400 if name in CLOUDEVENT_FUNCTIONS else 200), done.stderr
    assert result["asgi"] == (name in ASGI_FUNCTIONS)
    if name in ASGI_FUNCTIONS:
        assert json.loads(result["body"]) == ASGI_FUNCTIONS[name]
    if name == "approvals":
        status, page = result["console"]
        assert status == 503 and "the approver console is not configured" in page, page


def test_pubsub_push_reaches_a_cloud_event_function_like_eventarc(tmp_path: Path) -> None:
    """pubsub.tf pushes to the executor and slack_notify instead of an Eventarc
    trigger; functions-framework must turn the push body into the CloudEvent shape
    the functions read (event.data["message"]["data"], base64)."""
    import functions_framework as ff

    seen = tmp_path / "seen.json"
    (tmp_path / "main.py").write_text(
        "import json, functions_framework\n"
        "@functions_framework.cloud_event\n"
        "def handler(event):\n"
        f"    with open({str(seen)!r}, 'w') as fh:\n"
        "        attributes = dict(event.get_attributes())\n"
        "        json.dump({'attributes': attributes, 'data': event.data}, fh, default=str)\n"
    )
    app = ff.create_app("handler", str(tmp_path / "main.py"))
    payload = base64.b64encode(b'{"job_id": "j1"}').decode()
    push = {
        "message": {"data": payload, "attributes": {"k": "v"}, "messageId": "42"},
        "subscription": "projects/p/subscriptions/bqgate-execute-to-executor",
    }
    response = app.test_client().post("/projects/p/topics/bqgate-execute", json=push)
    assert response.status_code == 200
    event = json.loads(seen.read_text())
    assert event["attributes"]["type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert (
        event["attributes"]["source"] == "//pubsub.googleapis.com/projects/p/topics/bqgate-execute"
    )
    assert event["attributes"]["id"] == "42"
    assert base64.b64decode(event["data"]["message"]["data"]) == b'{"job_id": "j1"}'
    assert event["data"]["message"]["attributes"] == {"k": "v"}
