"""The example app for controller-lite: answers "hello from instance N" on $PORT.

CF's runtime contract gives every instance PORT and CF_INSTANCE_INDEX; this app needs
nothing else, and only the Python standard library.
"""

import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INDEX = os.environ.get("CF_INSTANCE_INDEX", "?")
GUID = os.environ.get("CF_INSTANCE_GUID", "")


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from instance {INDEX}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Instance-Guid", GUID)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        # One line per request on stdout: it shows up in `controller-lite logs`.
        print(f"{self.command} {self.path} -> instance {INDEX}", flush=True)


def main():
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Hello)
    # Exit promptly on SIGTERM (the platform's graceful stop).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"instance {INDEX} listening on port {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
