#!/usr/bin/python3
"""A stand-in OTLP/HTTP receiver for tests: accepts POST /v1/traces with the JSON encoding,
parses each body into an opentelemetry.proto ExportTraceServiceRequest with the protobuf
library's JSON parser (strict: unknown fields and wrong types are errors) against the
official .proto files, compiled by protoc at start-up, and prints one JSON line per span
read back from the parsed message. OTLP's JSON differs from protobuf's in one point: trace
and span ids are hex, not base64 (OTLP specification, "JSON Protobuf Encoding"), so those
are converted before parsing. Usage: otlp_receiver.py DIR (generated code goes there).
Prints "listening on PORT" first, "decode error: ..." for a request it cannot parse."""
import base64
import glob
import http.server
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def main():
    out = sys.argv[1]
    protos = os.path.join(HERE, "otlp")
    files = glob.glob(os.path.join(protos, "**", "*.proto"), recursive=True)
    subprocess.run(["protoc", "-I", protos, "--python_out=" + out] + files, check=True)
    sys.path.insert(0, out)
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    def hex_ids_to_base64(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ID_FIELDS and isinstance(v, str):
                    node[k] = base64.b64encode(bytes.fromhex(v)).decode()
                else:
                    hex_ids_to_base64(v)
        elif isinstance(node, list):
            for v in node:
                hex_ids_to_base64(v)

    def value(any_value):
        kind = any_value.WhichOneof("value")
        return getattr(any_value, kind) if kind else None

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                if self.path != "/v1/traces":
                    raise ValueError("POST to %s, not /v1/traces" % self.path)
                if self.headers.get("Content-Type") != "application/json":
                    raise ValueError("content type %s" % self.headers.get("Content-Type"))
                obj = json.loads(body)
                hex_ids_to_base64(obj)
                req = json_format.ParseDict(obj, trace_service_pb2.ExportTraceServiceRequest())
            except Exception as e:  # any failure to parse is what the test looks for
                print("decode error: %r" % (e,), flush=True)
                self.send_response(400)
                self.end_headers()
                return
            for rs in req.resource_spans:
                service = {a.key: value(a.value) for a in rs.resource.attributes}.get(
                    "service.name")
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        print(json.dumps({
                            "service": service,
                            "trace": s.trace_id.hex(),
                            "span": s.span_id.hex(),
                            "parent": s.parent_span_id.hex() or "0" * 16,
                            "name": s.name,
                            "start_ns": s.start_time_unix_nano,
                            "end_ns": s.end_time_unix_nano,
                            "status": s.status.code,
                            "tags": {a.key: value(a.value) for a in s.attributes},
                            "logs": [[e.name] for e in s.events],
                        }), flush=True)
            reply = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print("listening on %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
