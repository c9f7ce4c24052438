"""A client of Heimdall's functions and workers written with the official CloudEvents Python SDK.

Usage:
  cloudevents_client.py http <url> <event>
      Posts the event to a function with each of the SDK's APIs (`core`: cloudevents.core, the
      current one; `v1`: cloudevents.v1, the 1.x API most deployed clients use), in binary and
      in structured mode, and parses each reply with that API's from_http. Prints a JSON list of
      {api, mode, status, headers: {traceparent, tracestate}, reply: {attributes..., data} | null, body}.
  cloudevents_client.py nats <event>
      The event as NATS messages, built by the SDK (it has no NATS transport; the test publishes
      them): structured mode under `Content-Type: application/cloudevents+json`, the same JSON under
      `application/cloudevents`, the same JSON without headers (as sdk-go's JetStream writer sends
      it), and binary mode with the data content type as `ce-datacontenttype` (the NATS binding's
      header). Prints a JSON list of {form, headers, body_base64}.

<event>: JSON {"attributes": {...}, "data": {...}} or, for binary data, {"attributes": ..., "data_base64": "..."};
`time` in the attributes is an ISO 8601 string, given to the `core` API as a datetime (`v1` takes the string).
"""
import base64
import json
import sys
import urllib.error
import urllib.request
from datetime import datetime

from cloudevents.core.bindings import http as core_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as CoreEvent
from cloudevents.v1 import conversion as v1_conversion
from cloudevents.v1 import http as v1_http

JSON_FORMAT = JSONFormat()


def load_event(text):
    spec = json.loads(text)
    data = base64.b64decode(spec["data_base64"]) if "data_base64" in spec else spec["data"]
    return spec["attributes"], data


def core_event(attributes, data):
    attributes = dict(attributes)
    if "time" in attributes:
        attributes["time"] = datetime.fromisoformat(attributes["time"])
    return CoreEvent(attributes=attributes, data=data)


def post(url, headers, body):
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers.items()), error.read()


def plain(attributes, data):
    return {**{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in attributes.items()}, "data": data}


def parse_core(headers, body):
    event = core_http.from_http(core_http.HTTPMessage(headers=headers, body=body), JSON_FORMAT)
    return plain(event.get_attributes(), event.get_data())


def parse_v1(headers, body):
    event = v1_http.from_http(headers, body)
    return plain(event.get_attributes(), event.get_data())


def http(url, text):
    attributes, data = load_event(text)
    sends = []
    for mode in ("binary", "structured"):
        to = core_http.to_binary if mode == "binary" else core_http.to_structured
        message = to(core_event(attributes, data), JSON_FORMAT)
        sends.append(("core", mode, message.headers, message.body, parse_core))
        to = v1_conversion.to_binary if mode == "binary" else v1_conversion.to_structured
        headers, body = to(v1_http.CloudEvent(dict(attributes), data))
        sends.append(("v1", mode, headers, body, parse_v1))
    results = []
    for api, mode, headers, body, parse in sends:
        status, reply_headers, reply_body = post(url, headers, body)
        lower = {k.lower(): v for k, v in reply_headers.items()}
        reply = parse(reply_headers, reply_body) if "ce-specversion" in lower else None
        results.append({
            "api": api,
            "mode": mode,
            "status": status,
            "headers": {name: lower.get(name) for name in ("traceparent", "tracestate", "content-type")},
            "reply": reply,
            "body": None if reply else reply_body.decode("utf-8", "replace"),
        })
    return results


def nats(text):
    attributes, data = load_event(text)
    event = core_event(attributes, data)
    structured = core_http.to_structured(event, JSON_FORMAT)
    binary = core_http.to_binary(event, JSON_FORMAT)
    binary_headers = {("ce-datacontenttype" if k.lower() == "content-type" else k): v for k, v in binary.headers.items()}
    forms = [
        ("structured", structured.headers, structured.body),
        ("structured-bare", {"content-type": "application/cloudevents"}, structured.body),
        ("headerless", {}, structured.body),
        ("binary", binary_headers, binary.body),
    ]
    return [{"form": form, "headers": headers, "body_base64": base64.b64encode(body).decode()} for form, headers, body in forms]


if __name__ == "__main__":
    command = sys.argv[1]
    print(json.dumps(http(sys.argv[2], sys.argv[3]) if command == "http" else nats(sys.argv[2])))
