#!/usr/bin/python3
"""A stand-in Jaeger agent for tests: receives Agent.emitBatch datagrams over UDP, decodes
them with the Thrift library (compact protocol) against Jaeger's IDL compiled at start-up,
and prints one JSON line per span. Usage: jaeger_receiver.py DIR (the generated code goes
there; the caller removes it). Prints "listening on PORT" first, "decode error: ..."
for a datagram that is not a valid emitBatch. Runs until killed."""
import json
import os
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MASK = (1 << 64) - 1


def main():
    out = sys.argv[1]
    subprocess.run(["thrift", "-r", "--gen", "py", "-out", out,
                    os.path.join(HERE, "agent.thrift")], check=True)
    sys.path.insert(0, out)
    from agent import Agent  # generated
    from jaeger import ttypes  # generated
    from thrift.protocol import TCompactProtocol
    from thrift.transport import TTransport

    def tag_value(t):
        if t.vType == ttypes.TagType.STRING:
            return t.vStr
        if t.vType == ttypes.TagType.LONG:
            return t.vLong
        if t.vType == ttypes.TagType.BOOL:
            return t.vBool
        if t.vType == ttypes.TagType.DOUBLE:
            return t.vDouble
        return repr(t.vBinary)

    class Handler:
        def emitBatch(self, batch):
            # The generated processor only logs a oneway handler's exceptions: report them.
            try:
                self.print_batch(batch)
            except Exception as e:
                print("decode error: %r" % (e,), flush=True)

        def print_batch(self, batch):
            batch.validate()  # required fields present
            for s in batch.spans:
                s.validate()
                for t in (s.tags or []):
                    t.validate()
                print(json.dumps({
                    "service": batch.process.serviceName,
                    "trace": "%016x%016x" % (s.traceIdHigh & MASK, s.traceIdLow & MASK),
                    "span": "%016x" % (s.spanId & MASK),
                    "parent": "%016x" % (s.parentSpanId & MASK),
                    "name": s.operationName,
                    "flags": s.flags,
                    "start_us": s.startTime,
                    "duration_us": s.duration,
                    "tags": {t.key: tag_value(t) for t in (s.tags or [])},
                    "logs": [[f.vStr for f in log.fields] for log in (s.logs or [])],
                }), flush=True)

        def emitZipkinBatch(self, spans):
            print("decode error: a Zipkin batch", flush=True)

    processor = Agent.Processor(Handler())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    print("listening on %d" % sock.getsockname()[1], flush=True)
    while True:
        data = sock.recv(65536)
        itrans = TTransport.TMemoryBuffer(data)
        iprot = TCompactProtocol.TCompactProtocol(itrans)
        oprot = TCompactProtocol.TCompactProtocol(TTransport.TMemoryBuffer())
        try:
            processor.process(iprot, oprot)
        except Exception as e:  # any failure to decode is what the test looks for
            print("decode error: %r" % (e,), flush=True)
            continue
        left = len(data) - itrans._buffer.tell()
        if left != 0:
            print("decode error: %d trailing bytes" % left, flush=True)


if __name__ == "__main__":
    main()
