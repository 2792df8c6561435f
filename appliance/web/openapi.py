"""The OpenAPI 3.0 description of the JSON API, served at /api/openapi.json."""
from __future__ import annotations

from typing import Any


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required if required is not None else list(props)}


INT = {"type": "integer"}
NUM = {"type": "number"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


SCHEDULER = _obj({
    "running": BOOL, "message": STR, "config_error": _nullable(STR), "last_cycle_age": _nullable(NUM),
    "cycle": _nullable(INT), "cycle_seconds": _nullable(NUM),
    "cycle_phases": _nullable({"type": "object", "additionalProperties": NUM,
                               "description": "the last cycle's phases in seconds: observe_demand, observe_supply, "
                                              "decide, act, record"}),
}, ["running", "message"])

CLOUD = _obj({
    "name": STR, "type": {"type": "string", "enum": ["local", "docker", "swarm", "ec2", "openstack"]}, "enabled": BOOL,
    "priority": INT, "booting": INT, "idle": INT, "busy": INT, "draining": INT, "max_workers": INT,
    "health": {"type": "string", "enum": ["ok", "disabled", "backoff", "stopped"],
               "description": "backoff: launches paused after errors; stopped: too many quick failures, "
                              "re-enable the cloud to retry"},
    "backoff_seconds": INT, "failures": INT, "last_error": STR, "last_error_at": _nullable(NUM),
    "worker": _obj({"cpus": INT, "memory": INT, "disk": INT}),
    "shapes": {"type": "array", "description": "the sizes of worker it launches (its `worker` is the first)",
               "items": _obj({"name": STR, "cpus": INT, "memory": INT, "disk": INT, "gpus": INT,
                              "price": _nullable({**NUM, "description": "per hour; null: no price set"}),
                              "health": {"type": "string", "enum": ["ok", "backoff"],
                                         "description": "backoff: the cloud refused capacity for this shape; "
                                                        "its demand goes to the next cheapest shape"},
                              "backoff_seconds": INT,
                              "min_idle": {**INT, "description": "idle workers of this shape kept ready"},
                              "last_error": {**STR, "description": "its last capacity error, kept until it "
                                                                   "launches again"}})},
    "min_idle": {**INT, "description": "warm headroom: idle workers (of any shape) kept ready, never drained by "
                                       "idle_timeout, replaced when they take work"},
    "min_idle_window": _nullable({**STR, "description": "the daily hours the headroom is kept, e.g. "
                                                        "'08:00-18:00' (UTC) or '08:00-18:00 Europe/Berlin'; "
                                                        "null: all day"}),
    "headroom": _nullable({**_obj({
        "keep": {**INT, "description": "idle workers it keeps ready now (0 while disabled or outside "
                                       "min_idle_window)"},
        "off": _nullable({**STR, "description": "why none are kept now: disabled, or outside min_idle_window"}),
        "status": _nullable({**STR, "description": "the scheduler's last word on it, e.g. "
                                                   "'headroom: min_idle 1, 1 idle'"})}),
        "description": "null when neither the cloud nor its shapes have min_idle"}),
    "cost_per_hour": _nullable({**NUM, "description": "what its live workers cost per hour, from their shapes' "
                                                      "prices; null when no shape anywhere has a price"}),
    "spend_24h": _nullable({**NUM, "description": "what its workers cost over the last 24 hours (the window of "
                                                  "max_per_day), per second; null as cost_per_hour"}),
    "budget": _obj({"max_per_hour": _nullable(NUM), "max_per_day": _nullable(NUM)}),
    "images": {"type": "object", "additionalProperties": STR,
               "description": "the worker images jobs may ask for (+WorkerImage), name -> image; the default "
                              "(what a job asking none gets) first"},
    "vm_type": _nullable({**STR, "description": "what its workers advertise as VMType (cloudscheduler jobs)"}),
})

WORKER = _obj({
    "id": STR, "cloud": STR,
    "state": {"type": "string", "enum": ["requested", "booting", "idle", "busy", "draining", "retired", "failed"]},
    "condor_name": STR, "age_seconds": INT, "state_seconds": INT, "idle_seconds": _nullable(INT),
    "resource_id": STR, "reason": STR,
    "shape": {"type": "string", "description": "its shape (one of its cloud's); empty for a worker started by a "
                                               "release before shapes"},
    "image": {"type": "string", "description": "the name of its image (one of its cloud's `images`, `default` "
                                               "when the cloud has none); empty for a worker recorded before images"},
})

EVENT = _obj({
    "id": INT, "time": NUM, "kind": STR, "worker_id": _nullable(STR), "cloud": _nullable(STR),
    "from_state": _nullable(STR), "to_state": _nullable(STR), "reason": STR,
})

_GROUP_REQUIRED = ["key", "count", "cpus", "memory", "disk", "requirements", "target_clouds", "clouds", "status",
                   "reason"]
GROUP = _obj({
    "key": STR, "count": INT, "cpus": INT, "memory": INT, "disk": {"type": "integer", "description": "KiB"},
    "requirements": STR, "target_clouds": _nullable({"type": "array", "items": STR}),
    "clouds": {"type": "array", "items": STR},
    "status": {"type": "string", "enum": ["served", "launching", "waiting", "unschedulable", "sending away",
                                          "sent away"],
               "description": "sending away / sent away: offered to the pools of federation.flock_to"},
    "reason": STR,
    "schedd": {"type": "string", "description": "empty for this appliance's schedd, else the remote schedd "
                                                "(cloud_admin --allow-schedd) whose jobs flock here"},
    "owner": {"type": "string", "description": "a remote schedd's submitter (user@domain)"},
}, _GROUP_REQUIRED)

SCHEDD = _obj({
    "name": STR, "allowed_since": NUM, "address": STR, "read_token": BOOL,
    "state": {"type": "string", "enum": ["flocking", "quiet", "absent", "unreadable", "unknown"]},
    "detail": STR, "offered": INT, "idle_jobs": INT, "users": {"type": "array", "items": STR},
})

QUEUE = _obj({
    "updated_at": _nullable(NUM), "idle_jobs": INT, "unschedulable_jobs": INT,
    "groups": {"type": "array", "items": {"$ref": "#/components/schemas/JobGroup"}},
})

_SERIES = {"type": "array", "items": _nullable(NUM),
           "description": "one value per bucket of `times` (null: none recorded for it)"}
HISTORY = _obj({
    "bucket_seconds": {**INT, "description": "the length of a bucket (60)"},
    "window_seconds": {**INT, "description": "how far back buckets are kept (21600: six hours)"},
    "coalesce": {"type": "string", "enum": ["max"],
                 "description": "each series keeps its largest value of the bucket's scheduler cycles"},
    "times": {"type": "array", "items": INT,
              "description": "the buckets' start times (Unix seconds), oldest first; a bucket missing "
                             "means the scheduler did not run then"},
    "idle_jobs": _SERIES, "running_jobs": _SERIES,
    "workers_by_state": {"type": "object", "additionalProperties": _SERIES,
                         "description": "live workers per state: booting (requested ones too), idle, busy, "
                                        "draining"},
    "workers_by_cloud": {"type": "object", "additionalProperties": _SERIES,
                         "description": "live workers per cloud"},
    "spend_per_hour": _nullable({**_SERIES, "description": "what the live workers cost per hour; null when no "
                                                           "shape has a price"}),
})

CLOUD_DETAIL = {"allOf": [{"$ref": "#/components/schemas/Cloud"}, _obj({
    "workers": {"type": "array", "items": {"$ref": "#/components/schemas/Worker"}},
    "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
})]}


def _envelope(data: dict[str, Any]) -> dict[str, Any]:
    return _obj({"scheduler": {"$ref": "#/components/schemas/Scheduler"}, "data": data})


def _ok(description: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _envelope(data)}}}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


CLOUDS_OK = {"description": "the clouds", "content": {"application/json": {"schema": _obj({
    "scheduler": {"$ref": "#/components/schemas/Scheduler"},
    "data": {"type": "array", "items": {"$ref": "#/components/schemas/Cloud"}},
    "config_error": _nullable(STR)})}}}
AUTH_ERRORS = {"401": _err("no or wrong credentials"), "429": _err("too many failed logins from this client"),
               "503": _err("the configuration file is invalid")}
NAME = {"name": "name", "in": "path", "required": True, "schema": STR, "description": "a cloud's name"}
RELOAD = _obj({"id": INT, "ok": _nullable(BOOL), "message": STR, "source": STR,
               "version": {**STR, "description": "the first 12 hex digits of the file's SHA-256"},
               "loaded_at": NUM, "added": {"type": "array", "items": STR},
               "removed": {"type": "array", "items": STR},
               "changed": {"type": "object", "additionalProperties": {"type": "array", "items": STR}},
               "draining": {"type": "object", "additionalProperties": INT,
                            "description": "each removed cloud's live workers, which drain"},
               "reset_overrides": BOOL}, ["id", "ok", "message"])
REF = {k: {"$ref": f"#/components/schemas/{k}"} for k in ("Cloud", "Worker", "Event", "Queue", "CloudDetail",
                                                           "Schedd", "History")}


COMMENT = {"type": "string", "maxLength": 200,
           "description": "optional: why, recorded in the change's event after who made it"}
COMMENT_ARG = {"name": "comment", "in": "query", "required": False, "schema": COMMENT,
               "description": "why (or \"comment\" in a JSON body), recorded in the event"}


def spec() -> dict[str, Any]:
    def write(summary: str) -> dict[str, Any]:
        return {"summary": summary, "parameters": [NAME, COMMENT_ARG],
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"comment": COMMENT}}}}},
                "responses": {"200": _ok("the cloud after the change", REF["Cloud"]),
                              "400": _err("bad comment"),
                              "404": _err("no cloud of that name"), "403": _err("missing CSRF token (session only)"),
                              **AUTH_ERRORS}}

    return {
        "openapi": "3.0.3",
        "info": {"title": "Appliance admin API", "version": "1",
                 "description": "The data and operations of cloud_status and cloud_admin. Authenticate with HTTP "
                                "Basic as admin (the admin password), or with the web page's session cookie plus "
                                "an X-CSRF-Token header on writes. Answers are {scheduler, data}; errors {error} (and "
                                "config_error with 503). Served over HTTPS only."},
        "servers": [{"url": "/"}],
        "security": [{"basic": []}, {"session": []}],
        "paths": {
            "/api/clouds": {"get": {"summary": "clouds: enabled, worker counts by state, max_workers, health",
                                    "description": "config_error: null, or why appliance.yaml is invalid (the "
                                                   "scheduler manages no workers until it is fixed)",
                                    "responses": {"200": CLOUDS_OK, **AUTH_ERRORS}}},
            "/api/clouds/{name}": {
                "get": {"summary": "one cloud with its workers and recent events", "parameters": [NAME],
                        "responses": {"200": _ok("the cloud", REF["CloudDetail"]),
                                      "404": _err("no cloud of that name"), **AUTH_ERRORS}},
                "patch": {"summary": "change max_workers and/or enabled at runtime (kept across restarts)",
                          "parameters": [NAME],
                          "requestBody": {"required": True, "content": {"application/json": {"schema": {
                              "type": "object", "additionalProperties": False, "minProperties": 1,
                              "properties": {"max_workers": {"type": "integer", "minimum": 0, "maximum": 100000},
                                             "enabled": BOOL, "comment": COMMENT}}}}},
                          "responses": {"200": _ok("the cloud after the change", REF["Cloud"]),
                                        "400": _err("bad body"), "404": _err("no cloud of that name"),
                                        "403": _err("missing CSRF token (session only)"), **AUTH_ERRORS}}},
            "/api/clouds/{name}/enable": {"post": write("enable a cloud")},
            "/api/clouds/{name}/disable": {"post": write("disable a cloud: no new launches, running workers stay")},
            "/api/reload": {"post": {
                "summary": "reread appliance.yaml without a restart (as cloud_admin --reload): clouds added, "
                           "removed (their workers drain), changed; runtime settings are kept unless "
                           "reset_overrides",
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"reset_overrides": {**BOOL, "default": False}}}}}},
                "responses": {"200": _ok("the scheduler took the file", RELOAD),
                              "202": _ok("asked; the scheduler has not answered within 10 s", RELOAD),
                              "400": _err("the file is invalid, or the scheduler refused it: the running "
                                          "configuration stays"),
                              "403": _err("missing CSRF token (session only)"), **AUTH_ERRORS}}},
            "/api/workers": {"get": {
                "summary": "live workers", "parameters": [{
                    "name": "all", "in": "query", "required": False, "schema": {"type": "boolean"},
                    "description": "also those that ended in the last hour"}],
                "responses": {"200": _ok("the workers", {"type": "array", "items": REF["Worker"]}),
                              "400": _err("bad parameter"), **AUTH_ERRORS}}},
            "/api/queue": {"get": {"summary": "demand: idle jobs grouped by request (and by remote schedd, for jobs "
                                              "that flock here), the clouds that can run them",
                                   "responses": {"200": _ok("the demand", REF["Queue"]), **AUTH_ERRORS}}},
            "/api/schedds": {"get": {"summary": "remote schedds allowed to flock here (cloud_admin --allow-schedd), "
                                                "and what the scheduler last saw of each",
                                     "responses": {"200": _ok("the schedds", {"type": "array",
                                                                              "items": REF["Schedd"]}),
                                                   **AUTH_ERRORS}}},
            "/api/events": {"get": {
                "summary": "events: every worker transition and operator action, oldest first",
                "parameters": [
                    {"name": "since", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 0, "maximum": 2 ** 62},
                     "description": "only events with an id above this; without it, the newest `limit`"},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}],
                "responses": {"200": _ok("the events", {"type": "array", "items": REF["Event"]}),
                              "400": _err("bad parameter"), **AUTH_ERRORS}}},
            "/api/history": {"get": {
                "summary": "the pool over time: idle and running jobs, workers per state and per cloud, spend "
                           "per hour, in one-minute buckets of the last six hours (the page's charts)",
                "parameters": [
                    {"name": "since", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 0, "maximum": 2 ** 62},
                     "description": "Unix seconds: only the buckets from the one holding this time on; "
                                    "without it, the whole window"}],
                "responses": {"200": _ok("the series", REF["History"]),
                              "400": _err("bad parameter"), **AUTH_ERRORS}}},
        },
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "session": {"type": "apiKey", "in": "cookie", "name": "appliance_session"}},
            "schemas": {"Scheduler": SCHEDULER, "Cloud": CLOUD, "CloudDetail": CLOUD_DETAIL, "Worker": WORKER,
                        "Event": EVENT, "JobGroup": GROUP, "Schedd": SCHEDD, "Queue": QUEUE, "History": HISTORY,
                        "Error": _obj({"error": STR, "config_error": STR}, ["error"])},
        },
    }
