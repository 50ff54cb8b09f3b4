"""A stand-in for huggingface.co (outside the system, so the one thing faked): serves one model
folder as a private repo at one commit, over real HTTP, to callers with the right token.

It answers the three calls `huggingface_hub.snapshot_download` makes: the repo's info, its file
tree, and HEAD/GET of each file under /resolve/. Point HF_ENDPOINT at `url`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

JSON = {"Content-Type": "application/json"}


@dataclass
class FakeHub:
    repo_id: str
    commit: str
    token: str
    files: dict[str, bytes]
    # (method, path, Authorization header) of every request for the repo.
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, method: str, raw_path: str, auth: str | None) -> tuple[int, bytes, dict[str, str]]:
        path = unquote(urlparse(raw_path).path)
        if self.repo_id not in path:
            return 404, b"", {}
        self.requests.append((method, raw_path, auth))
        if auth != f"Bearer {self.token}":  # the hub hides a private repo from strangers
            return 401, b'{"error":"Invalid credentials"}', {**JSON, "X-Error-Code": "RepoNotFound"}
        if path.startswith(f"/api/models/{self.repo_id}/revision/"):
            siblings = [{"rfilename": name} for name in self.files]
            return 200, json.dumps({"id": self.repo_id, "sha": self.commit, "siblings": siblings}).encode(), JSON
        if path.startswith(f"/api/models/{self.repo_id}/tree/"):
            tree = [
                {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for name, data in self.files.items()
            ]
            return 200, json.dumps(tree).encode(), JSON
        prefix = f"/{self.repo_id}/resolve/"
        if path.startswith(prefix):
            name = path[len(prefix) :].partition("/")[2]
            if name not in self.files:
                return 404, b"", {"X-Error-Code": "EntryNotFound"}
            data = self.files[name]
            return 200, data, {"X-Repo-Commit": self.commit, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
        return 404, b"", {"X-Error-Code": "RepoNotFound"}

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def start_fake_hub(model_dir: Path, repo_id: str, commit: str, token: str) -> FakeHub:
    files = {p.relative_to(model_dir).as_posix(): p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    hub = FakeHub(repo_id, commit, token, files)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _reply(self, head: bool) -> None:
            status, body, headers = hub.answer(self.command, self.path, self.headers.get("authorization"))
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._reply(head=False)

        def do_HEAD(self) -> None:
            self._reply(head=True)

    hub.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=hub.server.serve_forever, daemon=True).start()
    return hub
