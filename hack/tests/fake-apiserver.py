#!/usr/bin/env python3
"""A stand-in for the Kubernetes API, just enough for Helm's `lookup` of APIServices and
Secrets, so that hack/check-chart.sh can test the chart's custom-metrics guard with no
cluster. usage: fake-apiserver.py APISERVICES.json PORT_FILE
Serves discovery for v1 secrets and apiregistration.k8s.io/v1 apiservices, lists the
APIServices in APISERVICES.json, and answers 404 to everything else. It listens on a free
port on 127.0.0.1, writes that port to PORT_FILE, and logs each request path to stderr."""
import http.server
import json
import sys


def resources(group_version, names):
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {"name": n, "singularName": n[:-1], "namespaced": ns, "kind": k, "verbs": ["get", "list"]}
            for n, ns, k in names
        ],
    }


def main():
    items = json.load(open(sys.argv[1]))
    routes = {
        "/api/v1": resources("v1", [("secrets", True, "Secret")]),
        "/apis/apiregistration.k8s.io/v1": resources(
            "apiregistration.k8s.io/v1", [("apiservices", False, "APIService")]),
        "/apis/apiregistration.k8s.io/v1/apiservices": {
            "kind": "APIServiceList", "apiVersion": "apiregistration.k8s.io/v1",
            "metadata": {}, "items": items},
    }
    not_found = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                 "reason": "NotFound", "code": 404}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?")[0]
            sys.stderr.write(f"GET {path}\n")
            body = routes.get(path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(body or not_found).encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    with open(sys.argv[2], "w") as f:
        f.write(str(server.server_address[1]))
    server.serve_forever()


main()
