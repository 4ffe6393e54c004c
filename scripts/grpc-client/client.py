"""A gRPC client of the agent written with the ecosystem's own tools, not
the project's: grpcio, with stubs that grpcio-tools generates from
crates/auspex/proto at every run. tests/grpc_clients.rs runs it; each
command prints one JSON document on stdout.

    client.py [TLS options] TARGET subscribe REQUEST_JSON COUNT
    client.py [TLS options] TARGET status REQUEST_JSON      (the status code)
    client.py [TLS options] TARGET raw HEX                  (undecodable bytes)
    client.py [TLS options] TARGET health [SERVICE]
    client.py [TLS options] TARGET reflection

TARGET is grpcio's: HOST:PORT or unix:PATH. TLS options: --ca FILE (trust
it, use TLS), --cert FILE --key FILE (a client certificate: mutual TLS),
--name NAME (the server name to check the certificate against).
"""

import argparse
import importlib
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(ROOT, "crates", "auspex", "proto")
PROTO = "auspex/v1/events.proto"
TIMEOUT = float(os.environ.get("AUSPEX_CLIENT_TIMEOUT", "15"))


def stubs():
    """Generates the Python stubs from the proto into a temporary directory
    and imports them."""
    out = tempfile.mkdtemp(prefix="auspex-stubs-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        PROTO,
    ])
    if code != 0:
        sys.exit(f"grpcio-tools could not compile {PROTO}: exit {code}")
    sys.path.insert(0, out)
    return (importlib.import_module("auspex.v1.events_pb2"),
            importlib.import_module("auspex.v1.events_pb2_grpc"))


def channel(args):
    # gRPC C-core (grpcio) since 1.57 sends a Unix socket's percent-encoded
    # path as :authority, which hyper's h2 (under the agent, and every tonic
    # server) refuses with PROTOCOL_ERROR (grpc/grpc#38142, hyperium/h2#487):
    # a socket's clients name their authority, as grpc-go does by default.
    unix = [("grpc.default_authority", "localhost")] if args.target.startswith("unix:") else []
    if args.ca is None:
        return grpc.insecure_channel(args.target, unix)
    read = lambda p: open(p, "rb").read() if p else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca),
        private_key=read(args.key),
        certificate_chain=read(args.cert),
    )
    options = [("grpc.ssl_target_name_override", args.name)] if args.name else []
    return grpc.secure_channel(args.target, credentials, options + unix)


def failure(e):
    return {"code": e.code().name, "details": e.details()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--name")
    parser.add_argument("target")
    parser.add_argument("command")
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args()
    pb, pb_grpc = stubs()
    with channel(args) as ch:
        try:
            if args.command == "subscribe":
                request = pb.SubscribeRequest(**json.loads(args.rest[0]))
                count = int(args.rest[1])
                stream = pb_grpc.EventsStub(ch).Subscribe(request, timeout=TIMEOUT)
                # Subscribed once the server sent its headers.
                stream.initial_metadata()
                print(json.dumps({"subscribed": True}), flush=True)
                events = []
                for event in stream:
                    events.append({"type": event.type, "json": json.loads(event.json)})
                    if len(events) == count:
                        break
                stream.cancel()
                result = {"events": events}
            elif args.command == "status":
                request = pb.SubscribeRequest(**json.loads(args.rest[0]))
                stream = pb_grpc.EventsStub(ch).Subscribe(request, timeout=TIMEOUT)
                try:
                    next(stream)
                    result = {"code": "OK"}
                except grpc.RpcError as e:
                    result = failure(e)
            elif args.command == "raw":
                call = ch.unary_stream(
                    "/auspex.v1.Events/Subscribe",
                    request_serializer=lambda b: b,
                    response_deserializer=lambda b: b,
                )
                try:
                    next(call(bytes.fromhex(args.rest[0]), timeout=TIMEOUT))
                    result = {"code": "OK"}
                except grpc.RpcError as e:
                    result = failure(e)
            elif args.command == "health":
                from grpc_health.v1 import health_pb2, health_pb2_grpc
                service = args.rest[0] if args.rest else ""
                response = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
                result = {"status": health_pb2.HealthCheckResponse.ServingStatus.Name(
                    response.status)}
            elif args.command == "reflection":
                from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
                stub = reflection_pb2_grpc.ServerReflectionStub(ch)
                requests = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
                services = []
                for response in stub.ServerReflectionInfo(requests, timeout=TIMEOUT):
                    services += [s.name for s in response.list_services_response.service]
                    break
                result = {"services": sorted(services)}
            else:
                sys.exit(f"unknown command {args.command}")
        except grpc.RpcError as e:
            result = failure(e)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
