"""The example app for controller-lite: answers "hello from instance N" on $PORT.

CF's runtime contract gives every instance PORT and CF_INSTANCE_INDEX; this app needs
nothing else, and only the Python standard library.
"""

import os
import signal
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


class Server(ThreadingHTTPServer):
    # Requests in progress are finished before the process exits: server_close() waits
    # for their threads, which it would not do for daemon threads (the default here).
    daemon_threads = False
    # How long handle_request() waits for a connection: the loop in main() sees a SIGTERM
    # within this time, and serves what still comes meanwhile.
    timeout = 0.5


def main():
    port = int(os.environ.get("PORT", "8080"))
    server = Server(("0.0.0.0", port), Hello)
    # The platform's graceful stop: SIGTERM, then SIGKILL if still running after 10 s.
    # Stop accepting, finish the requests in progress, exit. The handler only sets a
    # flag: exiting from it would abandon responses half-written, and the router would
    # have to cut those clients' connections.
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    print(f"instance {INDEX} listening on port {port}", flush=True)
    while not stopping:
        server.handle_request()
    server.server_close()


if __name__ == "__main__":
    main()
