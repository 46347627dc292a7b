"""A stand-in for kube-apiserver's pod endpoints, for lab tests of `kubernetes.enrich`.

No Kubernetes API server runs here, so this serves canned responses instead: `GET /api/v1/pods`
returns the PodList in guard/tests/fixtures/k8s/pods-list.json plus one Running pod per
`IP[,IP]=namespace/name` argument (built from the fixture's first pod, so the shape is the
fixture's), and a watch (`watch=true`) is answered with headers and then kept open with no events.
Prints `listening on PORT` once bound; every request path goes to stderr.

    python3 k8s_fake_api.py 10.0.0.5,fd00::5=shop/cart-abc ...
"""

from __future__ import annotations

import copy
import http.server
import json
import sys
import time
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent.parent / "guard" / "tests" / "fixtures" / "k8s" / "pods-list.json"


def pod_list(extra: list[str]) -> bytes:
    listed = json.loads(FIXTURE.read_text())
    template = listed["items"][0]
    for arg in extra:
        ips, ref = arg.split("=", 1)
        namespace, name = ref.split("/", 1)
        pod = copy.deepcopy(template)
        pod["metadata"].update(namespace=namespace, name=name, uid=f"00000000-0000-4000-8000-{len(listed['items']):012d}")
        pod["status"]["podIPs"] = [{"ip": ip} for ip in ips.split(",")]
        pod["status"]["podIP"] = ips.split(",")[0]
        listed["items"].append(pod)
    return json.dumps(listed, separators=(",", ":")).encode()


def main() -> None:
    body = pod_list(sys.argv[1:])

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            print(self.path, file=sys.stderr, flush=True)
            if not self.path.startswith("/api/v1/pods?"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if "watch=true" not in self.path:
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            # A quiet watch; the lab stops this process by pid.
            while True:
                time.sleep(3600)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
