"""A client instrumented with the OpenTelemetry Python SDK: it makes its own CLIENT span for one
request, injects traceparent into it, and exports that span over OTLP/HTTP.
usage: sdk_client.py PORT OTLP_BASE_URL; prints: status trace_id span_id"""
import http.client
import sys

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

provider = TracerProvider(resource=Resource.create({"service.name": "sdk-client"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[2] + "/v1/traces")))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("sdk-client")

with tracer.start_as_current_span("GET", kind=trace.SpanKind.CLIENT) as span:
    headers = {}
    propagate.inject(headers)
    conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
    conn.request("GET", "/sdk", headers=headers)
    response = conn.getresponse()
    response.read()
    ctx = span.get_span_context()
    print(response.status, format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))
provider.shutdown()
