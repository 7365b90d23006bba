#!/usr/bin/env python3
"""Writes schemas/topics/*.json, the JSON Schema of every wxpipe topic.

The topic list must match src/topic.rs (a test checks every topic has a valid schema and
every record the ingress writes validates). Run from anywhere: python3 schemas/generate.py
"""
import json
import pathlib

VERSION = 1
EVENTS = ["subscribe", "unsubscribe", "scan", "location", "click", "view",
          "view_miniprogram", "scancode_push", "scancode_waitmsg", "pic_sysphoto",
          "pic_photo_or_album", "pic_weixin", "location_select", "templatesendjobfinish",
          "masssendjobfinish", "subscribe_msg_popup_event", "subscribe_msg_change_event",
          "subscribe_msg_sent_event", "user_info_modified", "kf_create_session",
          "kf_close_session", "kf_switch_session"]
MESSAGES = ["text", "image", "voice", "video", "shortvideo", "location", "link"]

NULLABLE_STRING = {"type": ["string", "null"]}
NUMBER = {"type": "number"}
TYPED = {
    ("event", "subscribe"): {
        "scene": dict(NULLABLE_STRING, description="QR-code scene value (EventKey without `qrscene_`); null for a plain follow"),
        "ticket": dict(NULLABLE_STRING, description="QR-code ticket; null for a plain follow"),
    },
    ("event", "scan"): {
        "scene": dict(NULLABLE_STRING, description="QR-code scene value (EventKey)"),
        "ticket": dict(NULLABLE_STRING, description="QR-code ticket"),
    },
    ("event", "location"): {
        "latitude": dict(NUMBER, description="Latitude"),
        "longitude": dict(NUMBER, description="Longitude"),
        "precision": dict(NUMBER, description="Precision"),
    },
    ("event", "click"): {"key": {"type": "string", "description": "Menu key (EventKey)"}},
    ("event", "view"): {"url": {"type": "string", "description": "URL opened (EventKey)"}},
}


def schema(kind, type_):
    suffix = f"{kind}.{type_}"
    props = {
        "id": {"type": "string", "minLength": 1,
               "description": "Dedup identity: the same for every retry of one push"},
        "account": {"type": "string", "minLength": 1, "description": "ToUserName (gh_…)"},
        "openid": {"type": "string", "minLength": 1, "description": "FromUserName"},
        "created_at": {"type": "integer", "minimum": 0, "description": "CreateTime, Unix seconds"},
        "received_at": {"type": "string",
                        "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
                        "description": "Ingress clock, RFC 3339 UTC with milliseconds"},
        "kind": {"const": kind},
        "type": ({"type": "string", "pattern": "^[a-z0-9_.-]+$",
                  "not": {"enum": EVENTS if kind == "event" else MESSAGES}}
                 if type_ == "other" else {"const": type_}),
    }
    typed = TYPED.get((kind, type_), {})
    props.update(typed)
    props["extra"] = {"type": "object", "additionalProperties": {"$ref": "#/$defs/xml"},
                      "description": "Every element not mapped above"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:wxpipe:schema:v{VERSION}:{suffix}",
        "title": f"wxpipe record on {{prefix}}.{suffix}",
        "type": "object",
        "required": ["id", "account", "openid", "created_at", "received_at", "kind", "type",
                     *typed.keys(), "extra"],
        "properties": props,
        "additionalProperties": False,
        "$defs": {
            "xml": {
                "description": "An XML element: a leaf is its text; a nested element an object "
                               "of its children; repeated children an array",
                "anyOf": [
                    {"type": "string"},
                    {"type": "object", "additionalProperties": {"$ref": "#/$defs/xml"}},
                    {"type": "array", "items": {"$ref": "#/$defs/xml"}},
                ],
            }
        },
    }


out = pathlib.Path(__file__).resolve().parent / "topics"
out.mkdir(exist_ok=True)
for kind, types in (("event", EVENTS), ("message", MESSAGES)):
    for type_ in [*types, "other"]:
        path = out / f"{kind}.{type_}.json"
        path.write_text(json.dumps(schema(kind, type_), indent=2, ensure_ascii=False) + "\n")
