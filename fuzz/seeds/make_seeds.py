#!/usr/bin/env python3
"""Writes the hand-made seed corpus of every target into fuzz/corpus/<target>/.

Seeds are named after what they exercise; the fuzzer adds its own (hash-named) files
next to them. Re-running this script rewrites the seeds and leaves other files alone.
"""
import json
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")
SEP = b"==UPSTREAM=="


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# register_message: gorouter / route-emitter payloads, valid and not.
emitter = {
    "host": "10.0.0.1", "port": 61001, "uris": ["a.example.com", "b.example.com/path"],
    "app": "0123abcd-0000-4000-8000-00000000beef", "private_instance_id": "iid-1",
    "private_instance_index": "2", "tags": {"component": "route-emitter"},
    "endpoint_updated_at_ns": 1700000000000000000, "stale_threshold_in_seconds": 30,
    "isolation_segment": "seg", "protocol": "http1", "availability_zone": "z1",
    "options": {"loadbalancing": "least-connection"}, "something_new": [1, 2],
}
write("register_message", "route_emitter", json.dumps(emitter))
write("register_message", "tls_port_http2", json.dumps({
    "host": "10.0.0.2", "tls_port": 61443, "uris": ["*.apps.example.com"],
    "server_cert_domain_san": "iid-2", "protocol": "http2", "private_instance_index": 7}))
write("register_message", "tcp_route", json.dumps({
    "host": "127.0.0.1", "port": 5432, "external_port": 6000, "uris": []}))
write("register_message", "route_service", json.dumps({
    "host": "h", "port": 1, "uris": ["a.com:8080/x/?q=1"], "route_service_url": "https://rs"}))
write("register_message", "bad_host", '{"host":"1.2.3.4\\r\\nX: y","port":1,"uris":["a"]}')
write("register_message", "bad_uri", '{"host":"h","port":1,"uris":["a b","*.","a*.b"]}')
write("register_message", "header_unsafe_app", '{"host":"h","port":1,"uris":["a"],"app":"x\\ny"}')
write("register_message", "unicode_uri", '{"host":"h","port":1,"uris":["\u00e9.com/\u00e9"]}')
write("register_message", "null_index", '{"host":"h","port":1,"uris":["a"],"private_instance_index":null}')
write("register_message", "port_too_big", '{"host":"h","port":70000,"uris":["a"]}')
write("register_message", "not_json", "router.register")
write("register_message", "array", "[1,2,3]")

# config: gorouter-style YAML.
write("config", "empty", "")
write("config", "gorouter_keys", """port: 9000
status: {host: 127.0.0.1, port: 9001, user: u, pass: p, routes: {port: 9002}}
nats: {hosts: [{hostname: 127.0.0.1, port: 4222}], user: n, pass: s}
droplet_stale_threshold: 1m30s
prune_stale_droplets_interval: 30s
endpoint_timeout: 250ms
balancing_algorithm: least-connection
tcp_port_range: 2000-3000
backends: {max_conns: 10, max_attempts: 2}
sticky_session_cookie_names: [JSESSIONID, SESSION]
access_log: {file: "-"}
logging: {level: debug}
http2: {max_concurrent_streams: 100, max_frame_size: 16384}
tracing: {enable_w3c: true, w3c_tenant_id: t}
some_gorouter_key_we_ignore: [1, 2]
""")
write("config", "static_routes", """routes:
  - {host: 127.0.0.1, port: 8080, uris: [a.example.com, b.example.com/x]}
  - {host: 127.0.0.1, port: 5432, external_port: 6000}
tcp_port_range: 5000-7000
""")
write("config", "bad_duration", "droplet_stale_threshold: soon\n")
write("config", "bad_nested", "status: {port: -1}\n")
write("config", "anchors", "a: &x {port: 1}\nstatus: *x\nports: [*x, *x]\n")
write("config", "tls_versions", "min_tls_version: TLSv1.3\nmax_tls_version: TLSv1.2\n")
write("config", "numbers_as_durations", "drain_wait: 5\ndrain_timeout: 1h\nread_header_timeout: 0\n")

# duration: Go durations and port ranges.
for i, d in enumerate(["120s", "5m", "1m30s", "250ms", "1.5h", "30", "0", "0s", "1us",
                       "3\u00b5s", "10ns", "1h2m3.5s", "99999999999999h", "1e3s", "-1s",
                       "1024-65535", "1-1", " 80 - 90 ", "0-10", "9-1"]):
    write("duration", f"seed_{i:02}", d)

# route_table_ops: op bytes (see route_model.rs).
write("route_table_ops", "register_then_prune",
      bytes([0, 0x10, 0, 0, 1, 0, 0x11, 1, 0, 2, 1, 9, 0, 0, 0, 200, 12, 0, 0, 0]))
write("route_table_ops", "wildcards_and_paths",
      bytes([1, 0x30, 3, 5, 1, 2, 0x31, 4, 6, 2, 0, 0x32, 1, 9, 3, 1, 6, 3, 5, 1, 12, 0, 0, 0]))
write("route_table_ops", "tcp_and_static",
      bytes([0, 0x45, 0, 0, 1, 3, 0xc0, 0, 0, 2, 0, 0x46, 0, 0, 1, 14, 0, 0, 0, 9, 0, 0, 0, 250, 12, 0, 0, 0]))
write("route_table_ops", "empty_pool_timeout",
      bytes([1, 0x10, 2, 2, 1, 0, 0x16, 2, 2, 1, 9, 0, 0, 0, 5, 12, 0, 0, 0, 9, 0, 0, 0, 20, 12, 0, 0, 0]))

# route_lookup: uri count, uris, then "host path" probes.
write("route_lookup", "exact_and_paths", b"\x03a.com\na.com/foo\na.com/foo/bar\nA.COM:80 /foo/bar/baz\na.com /foobar\na.com. /FOO\n")
write("route_lookup", "wildcards", b"\x03*.example.com\n*.b.example.com\na.b.example.com\nx.y.b.example.com /\nexample.com /\nQ.example.com:1 /\n")
write("route_lookup", "odd_uris", b"\x04a.com:8080/x/?q=1\nd.com//\n*.a_b-c.com/p\nbad uri\nz.a_b-c.com /p/q\nd.com //\n[::1]:80 /\n")

# header_rewrite: flags, two IP bytes, then header lines.
write("header_rewrite", "forwarded_and_hop_by_hop", b"\x00\x01\x02" + b"\n".join([
    b"X-Forwarded-For: 1.1.1.1", b"x-forwarded-for: 2.2.2.2, 3.3.3.3",
    b"Connection: keep-alive, X-Secret", b"X-Secret: s", b"Keep-Alive: timeout=5",
    b"TE: trailers, deflate", b"Transfer-Encoding: chunked", b"Upgrade: websocket",
    b"X-Forwarded-Proto: https", b"X-Vcap-Request-Id: spoofed"]))
write("header_rewrite", "connection_lists_forwarding", b"\x12\x09\x09" + b"\n".join([
    b"Connection: x-forwarded-for, te, x-forwarded-proto", b"X-Forwarded-For: 9.9.9.9",
    b"TE: trailers", b"X-Forwarded-Client-Cert: abc"]))
write("header_rewrite", "obs_text_in_connection", b"\x20\x00\x00" + b"\n".join([
    b"Connection: x-hop, caf\xc3\xa9", b"X-Hop: 1", b"Proxy-Authorization: Basic x"]))
write("header_rewrite", "connection_lists_host", b"\x00\x00\x00" + b"\n".join([
    b"Connection: host, content-length", b"Host: a.example.com", b"Content-Length: 0"]))

# sticky_cookies: flags, instance id, context path, header lines.
write("sticky_cookies", "session_and_vcap_id", b"\x00inst-1\n/app\n" + b"\n".join([
    b"Cookie: a=1; JSESSIONID=xyz", b"Cookie: __VCAP_ID__=\"abc\"",
    b"Set-Cookie: JSESSIONID=s; Path=/app; Secure; SameSite=Lax; Max-Age=-1; Partitioned",
    b"Set-Cookie: other=1; Secure"]))
write("sticky_cookies", "vcap_id_alone", b"\x01inst-2\n\nCookie: __VCAP_ID__=abc\nSet-Cookie: __VCAP_ID__=x")
write("sticky_cookies", "bad_instance_id", b"\x00bad;id\n/\nCookie: SESSION=1; __VCAP_ID__=\nSet-Cookie: SESSION=2; Expires=Wed, 21 Oct 2026 07:28:00 GMT")

# app_instance_header.
write("app_instance_header", "valid", "0123abcd-0000-4000-8000-00000000beef:12")
write("app_instance_header", "uppercase", "0123ABCD-0000-4000-8000-00000000beef:1")
write("app_instance_header", "no_index", "0123abcd-0000-4000-8000-00000000beef:")
write("app_instance_header", "garbage", "nope")

# traceparent: tenant length byte, traceparent line, tracestate.
write("traceparent", "valid_with_state", b"\x03" + b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n" + b"gorouter=1111111111111111,vendor=x, tenant1@gorouter=2")
write("traceparent", "zero_trace", b"\x00" + b"00-00000000000000000000000000000000-b7ad6b7169203331-01\n")
write("traceparent", "uppercase", b"\x07" + b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01\nx=y")
write("traceparent", "version_ff", b"\x01" + b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n")

# proxy_http1: client bytes ==UPSTREAM== app bytes.
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
def proxy(name, client, app=None):
    write("proxy_http1", name, client if app is None else client + SEP + app)

proxy("get", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\n")
proxy("get_keepalive_twice", b"GET /a HTTP/1.1\r\nHost: fuzz.test\r\n\r\nGET /b HTTP/1.1\r\nHost: fuzz.test\r\n\r\n", OK)
proxy("post_content_length", b"POST /ctx/x HTTP/1.1\r\nHost: fuzz.test\r\nContent-Length: 5\r\n\r\nhello", OK)
proxy("post_chunked", b"POST / HTTP/1.1\r\nHost: a.wild.test\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n", OK)
proxy("cl_and_te", b"POST / HTTP/1.1\r\nHost: fuzz.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: fuzz.test\r\n\r\n", OK)
proxy("duplicate_cl", b"POST / HTTP/1.1\r\nHost: fuzz.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", OK)
proxy("te_http10", b"POST / HTTP/1.0\r\nHost: fuzz.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", OK)
proxy("obs_fold", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\nX-A: a\r\n b\r\n\r\n", OK)
proxy("bare_lf", b"GET / HTTP/1.1\nHost: fuzz.test\nX-A: a\n\n", OK)
proxy("bad_chunk_size", b"POST / HTTP/1.1\r\nHost: fuzz.test\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", OK)
proxy("expect_continue", b"POST / HTTP/1.1\r\nHost: fuzz.test\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
proxy("head", b"HEAD / HTTP/1.1\r\nHost: fuzz.test\r\n\r\nGET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
proxy("absolute_form", b"GET http://fuzz.test/ctx?x=1 HTTP/1.1\r\nHost: other.test\r\n\r\n", OK)
proxy("absolute_form_other_host", b"GET http://fuzz.test/ctx HTTP/1.1\r\nHost: evil.test\r\n\r\n")
proxy("http10_no_host", b"GET / HTTP/1.0\r\n\r\n", OK)
proxy("unknown_and_dead_routes", b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\nGET / HTTP/1.1\r\nHost: dead.test\r\n\r\nGET / HTTP/1.1\r\nHost: \r\n\r\n", OK)
proxy("app_instance", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\nX-CF-App-Instance: 0123abcd-0000-4000-8000-00000000beef:0\r\n\r\nGET / HTTP/1.1\r\nHost: fuzz.test\r\nX-CF-App-Instance: bad\r\n\r\n", OK)
proxy("sticky_session", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\nCookie: JSESSIONID=1; __VCAP_ID__=fuzz-instance\r\n\r\n", b"HTTP/1.1 200 OK\r\nSet-Cookie: JSESSIONID=2; Secure\r\ncontent-length: 0\r\n\r\n")
proxy("connection_lists_host", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\nConnection: host, x-forwarded-for\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n", OK)
proxy("websocket", b"GET /chat HTTP/1.1\r\nHost: fuzz.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x05hello", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi")
proxy("websocket_refused", b"GET /chat HTTP/1.1\r\nHost: fuzz.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", OK)
proxy("h2_prior_knowledge", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00", OK)
proxy("oversize_header", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", OK)
proxy("w3c_trace", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\ntracestate: a=b\r\n\r\n", OK)
proxy("upstream_chunked_trailers", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\nTE: trailers\r\n\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n")
proxy("upstream_te_and_cl", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n")
proxy("upstream_close_delimited", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\nuntil close")
proxy("upstream_short_body", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
proxy("upstream_hangs", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\n", b"~HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
proxy("upstream_garbage", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\n", b"\x00\xffnot http at all\r\n\r\n")
proxy("upstream_204_with_body", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\nGET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\n", b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello")
proxy("upstream_duplicate_cl", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc")
proxy("upstream_obs_fold", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\n", b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\ncontent-length: 0\r\n\r\n")
proxy("upstream_bare_lf", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\n", b"HTTP/1.1 200 OK\nX-A: a\ncontent-length: 2\n\nok")
proxy("upstream_header_injection", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\n", b"HTTP/1.1 200 OK\r\nX-A: a\rX-B: b\r\ncontent-length: 0\r\n\r\n")
proxy("upstream_1xx_then_close", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
proxy("upstream_bad_chunk", b"GET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n")
