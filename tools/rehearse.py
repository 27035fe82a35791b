#!/usr/bin/env python3
"""The rehearsal (`make rehearse`): a user's first day with coldpath, offline.

    sudo-less as root: .venv-deploy/bin/python tools/rehearse.py [--skip-sam] [--keep]
                       .venv-deploy/bin/python tools/rehearse.py --real-size MODEL_DIR [--keep]

With --real-size (`make rehearse-real-size`), only the captioning function, with a real-size
hoisted bundle: see `rehearse_real_size`. Every sandbox must ask for its first event within
Lambda's 10 s init limit (INIT_LIMIT_S).

1. The real SAM CLI checks the template: `sam validate --lint`, then `sam build` into
   target/rehearse/sam-build (offline: the template's CodeUri and ContentUri are the zips
   `make package` built, so SAM compiles nothing). The rest reads the template `sam build`
   wrote: its paths name what `sam deploy` would upload.
2. infra/template.yaml is read with its CloudFormation short-form tags and resolved the way
   CloudFormation would, with every parameter at its default (CaptioningModelSha256 is computed
   from the bundle, as `make deploy` does): each function's environment (Globals merged),
   MemorySize, Timeout, EphemeralStorage, CodeUri, layers and triggers; the queues' RedrivePolicy,
   the S3 notification's and the EventBridge rule's filters. Drift in the template changes the
   rehearsal.
3. moto (S3 + SQS, `.venv/bin/python -m moto.server` on 127.0.0.1) gets the stack's buckets and
   queues under the names CloudFormation would give them; the captioning bundle is published with
   tools/deploy.py's `publish_then_switch` (the documented order: each bundle under its own
   content-named key before the stack names it, the previous one left in place; two bundles in
   turn, the first to a stack that does not exist yet); a real photo
   (events/data/photos/group.jpg) and a phone's HEIC (IMG_0001.HEIC) are uploaded under photos/,
   where the README tells users to upload (not the template's PhotoPrefix, which is checked).
   The CLIP bundle (tests/fixtures/clip/vit-b-32-tiny, random weights) is published with each
   deploy in the same order, under ClipModelPrefix, and read back from where both towers' hosts
   (the clip and the embeddings function) point.
4. Each function runs as Lambda lays it out, one sandbox after the other: the zip unpacked on
   /var/task (read-only), its layers unpacked in order on /opt (read-only: ONNX Runtime for
   every function, the image codecs too for faces, clip and captioning), an empty tmpfs of
   EphemeralStorage on /tmp, all bind-mounted inside a private mount namespace (`unshare --mount`) so the host's
   /var, /opt and /tmp are untouched; memory limited to MemorySize and CPU to Lambda's share
   (MemorySize / 1769 vCPU) with a cgroup; the template's environment plus what Lambda itself
   sets (AWS_LAMBDA_*, LAMBDA_TASK_ROOT, credentials, region). `/var/task/bootstrap` talks to a
   Runtime API emulator (below) on 127.0.0.1.
5. The first day: an embeddings Function URL request (a real HTTP POST, turned into the Function
   URL payload v2 event), and a word search on the same URL naming the CLIP model (the text
   tower co-hosted there: one vector of the bundle's embed_dim); the photo upload's S3
   notification to faces -> its result in the results bucket, and the same for the HEIC; the
   upload's EventBridge "Object Created" event to the clip function, routed only by a rule that
   targets it, matches the upload and has a Lambda permission for it -> the photo's vector
   document in the results bucket (the embed_dim, unit length, the model's name), and the same
   for the HEIC; the same upload's EventBridge "Object Created" event as a caption message
   -> the caption in the results bucket, through an SQS event source mapping played honestly
   (receive up to BatchSize, the real SQS record shape, delete only what the response does not
   list in batchItemFailures); a poison message -> the caption DLQ after maxReceiveCount receives.
   Before the caption messages are consumed, the GPU pool's controller (infra/gpu/batch.yaml
   PoolController's own code) on an account with no GPU quota: the Lambda consumer must keep the
   queue while jobs wait RUNNABLE, the jobs be cancelled after StartBoundMinutes, a worker that
   runs step the Lambda aside and one that stops hand the queue back, and every message still
   be there for the captioning steps (which consume only while the mapping is Enabled).
   Also checked: embeddings and faces load the graphs prepared in their zips (no graph of a model
   in the zip optimised into /tmp; embeddings' CLIP text tower, fetched at init, is), faces, clip
   and captioning load the HEIC and AVIF decoders from the image-codecs layer
   (no "image decoder not available" at init), the caption queue ends empty, no sandbox mount
   shows in the host's mount table and the host's /var/task is as it was.
6. Prints each function's cold start from an empty /tmp (the function's own `cold start` record
   and the emulator's spawn-to-ready time), its peak RSS (VmHWM), and each result. Exit 0 when every
   step passed, 1 when any failed, 2 when a prerequisite is missing.

The Runtime API emulator is this file's own (RuntimeApi), implementing the documented protocol:
GET /2018-06-01/runtime/invocation/next with Lambda-Runtime-Aws-Request-Id, -Deadline-Ms (epoch
milliseconds, now + the template's Timeout), -Invoked-Function-Arn and -Trace-Id; POST
.../{id}/response, .../{id}/error and /runtime/init/error. cargo-lambda's `lambda watch
--only-lambda-apis` (1.9.2) was tried: it works offline but sends `Lambda-Runtime-Deadline-Ms:
600000` (a duration, not an epoch time) and the ARN "function-arn", so a function that honours
its deadline, as captioning does, sees its time as spent and captions nothing.

Rehearsal-only differences from AWS, each printed: the caption queue's VisibilityTimeout is
REHEARSAL_VISIBILITY seconds instead of the template's (so the poison message reaches the DLQ in
seconds); AWS_ENDPOINT_URL points the SDK at moto and COLDPATH_S3_FORCE_PATH_STYLE=true (bucket
host names under 127.0.0.1 do not resolve); Function URL IAM auth is not verified; the S3
notification and EventBridge delivery are made by this script from the real upload.

Needs root (mount namespace and cgroup) and runs with .venv-deploy's Python (boto3, PyYAML from
the SAM CLI's dependencies); moto runs from .venv (`make setup`).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

TEMPLATE = ROOT / "infra" / "template.yaml"
WORK = ROOT / "target" / "rehearse"
MOTO_PYTHON = ROOT / ".venv" / "bin" / "python"
# The SAM CLI from the venv running this script (.venv-deploy under `make rehearse`).
DEPLOY_BIN = Path(sys.executable).parent
CAPTIONING_FIXTURE = ROOT / "tests" / "fixtures" / "captioning" / "optimum-vit-gpt2-tiny-hoisted"
# The CLIP bundle make deploy publishes for both towers: the tiny random-weight ViT-B-32 in
# Immich's layout (tests/fixtures/clip/README.md); its vectors have config.json's embed_dim.
CLIP_FIXTURE = ROOT / "tests" / "fixtures" / "clip" / "vit-b-32-tiny"
PHOTO = ROOT / "events" / "data" / "photos" / "group.jpg"
PHOTO_FACES = 3  # events/data/photos/README.md: three faces, two people
# A phone's upload: the real six-person photo as an iPhone saves it (HEIC, the image-codecs layer).
PHONE_PHOTO = ROOT / "events" / "data" / "photos" / "IMG_0001.HEIC"
PHONE_PHOTO_FACES = 6
# Where a user uploads photos, as the README's Deployment section documents it (`aws s3 cp
# photo.jpg s3://<PhotoBucketName>/photos/photo.jpg`): the routing checks take the upload key
# from this contract, not from the template's PhotoPrefix they check, and an upload elsewhere
# in the bucket must reach neither consumer.
DOCUMENTED_UPLOAD_PREFIX = "photos/"
OUTSIDE_UPLOAD_KEY = "exports/" + "group.jpg"

STACK = "coldpath-rehearsal"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account
# A caption message becomes visible again this many seconds after a failed receive (the template
# says 740 s = 6 x Timeout + the batching window; the rehearsal cannot wait five times that for the DLQ).
REHEARSAL_VISIBILITY = 2
# Lambda gives one full vCPU at 1,769 MB and CPU in proportion to memory.
MB_PER_VCPU = 1769
# How long a sandbox may take from spawn to its first /next: Lambda's own init limit for an
# on-demand sandbox. An init past it is cut off and run again inside the first event; a function
# whose model loads slower than this (captioning at real size) loads it behind the first event.
INIT_LIMIT_S = 10


class RehearsalError(Exception):
    """A step failed; the message says which and what was found."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The template: YAML with CloudFormation's short-form tags, resolved like CloudFormation would.


def load_template(path: Path) -> dict:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct(tag: str):
        name = "Ref" if tag == "Ref" else f"Fn::{tag}"

        def make(loader, node):
            if isinstance(node, yaml.ScalarNode):
                value = loader.construct_scalar(node)
                if tag == "GetAtt":
                    value = value.split(".", 1)
            elif isinstance(node, yaml.SequenceNode):
                value = loader.construct_sequence(node, deep=True)
            else:
                value = loader.construct_mapping(node, deep=True)
            return {name: value}

        return make

    for tag in ("Ref", "Sub", "GetAtt", "If", "Equals", "Not", "And", "Or", "Select", "Split",
                "Join", "FindInMap", "Base64", "GetAZs", "ImportValue", "Condition"):
        Loader.add_constructor(f"!{tag}", construct(tag))
    with path.open() as f:
        return yaml.load(f, Loader=Loader)


@dataclass
class Stack:
    """The template resolved against the names this rehearsal gives its resources."""

    template: dict
    parameters: dict[str, str]
    stack_id: str
    base: Path  # the directory CodeUri and ContentUri are relative to
    physical: dict[str, str] = field(default_factory=dict)  # logical id -> Ref value
    attributes: dict[tuple[str, str], str] = field(default_factory=dict)

    def pseudo(self, name: str) -> str:
        return {
            "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::StackId": self.stack_id,
            "AWS::StackName": STACK, "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": None,
        }[name]

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template.get("Conditions", {})[name]))

    def ref(self, name: str):
        if name.startswith("AWS::"):
            return self.pseudo(name)
        if name in self.parameters:
            return self.parameters[name]
        if name in self.physical:
            return self.physical[name]
        raise RehearsalError(f"template: !Ref {name} names nothing this rehearsal created")

    def get_att(self, resource: str, attribute: str) -> str:
        try:
            return self.attributes[(resource, attribute)]
        except KeyError:
            raise RehearsalError(f"template: !GetAtt {resource}.{attribute} is not modelled") from None

    def sub(self, text: str, variables: dict) -> str:
        def replace(m: re.Match) -> str:
            expr = m.group(1)
            if expr.startswith("!"):
                return "${" + expr[1:] + "}"
            if expr in variables:
                return str(self.resolve(variables[expr]))
            if "." in expr and not expr.startswith("AWS::"):
                return str(self.get_att(*expr.split(".", 1)))
            return str(self.ref(expr))

        return re.sub(r"\$\{([^}]+)\}", replace, text)

    def resolve(self, node):
        if isinstance(node, list):
            return [self.resolve(n) for n in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                return self.get_att(*(arg if isinstance(arg, list) else arg.split(".", 1)))
            if key == "Fn::Sub":
                if isinstance(arg, list):
                    return self.sub(arg[0], arg[1])
                return self.sub(arg, {})
            if key == "Fn::If":
                return self.resolve(arg[1] if self.condition(arg[0]) else arg[2])
            if key == "Fn::Equals":
                a, b = self.resolve(arg)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(a) for a in arg)
            if key == "Fn::Or":
                return any(self.resolve(a) for a in arg)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::Select":
                index, items = self.resolve(arg)
                return items[int(index)]
            if key == "Fn::Split":
                sep, text = self.resolve(arg)
                return text.split(sep)
            if key == "Fn::Join":
                sep, items = self.resolve(arg)
                return sep.join(str(i) for i in items)
            if key == "Fn::FindInMap":
                # Mapping keys are strings; a Number parameter's default is looked up as its text.
                name, top, second = (str(a) for a in self.resolve(arg))
                try:
                    return self.template["Mappings"][name][top][second]
                except KeyError:
                    raise RehearsalError(f"template: !FindInMap [{name}, {top}, {second}] finds nothing") from None
            if key.startswith("Fn::"):
                raise RehearsalError(f"template: {key} is not modelled by the rehearsal")
        return {k: self.resolve(v) for k, v in node.items()}

    @property
    def resources(self) -> dict:
        return self.template["Resources"]

    def of_type(self, kind: str) -> list[str]:
        return [name for name, r in self.resources.items() if r["Type"] == kind]

    def created(self, logical: str) -> bool:
        cond = self.resources[logical].get("Condition")
        return cond is None or self.condition(cond)


def parameter_defaults(template: dict) -> dict[str, str]:
    return {name: str(p.get("Default", "")) for name, p in template.get("Parameters", {}).items()}


@dataclass
class FunctionSpec:
    logical: str
    name: str  # the function's physical name
    arn: str  # the ARN its triggers invoke (the alias's when AutoPublishAlias is set)
    code: Path
    layers: list[Path]
    memory_mb: int
    timeout_s: int
    storage_mb: int
    env: dict[str, str]
    events: dict
    url: bool


def function_specs(stack: Stack) -> dict[str, FunctionSpec]:
    glob = stack.template.get("Globals", {}).get("Function", {})
    specs = {}
    for logical in stack.of_type("AWS::Serverless::Function"):
        props = stack.resources[logical]["Properties"]
        merged = {**glob, **props}
        env = dict(stack.resolve(glob.get("Environment", {}).get("Variables", {})))
        env.update(stack.resolve(props.get("Environment", {}).get("Variables", {})))
        # SAM appends a function's own Layers to Globals' (lists merge; the rest overrides):
        # faces and captioning get the ONNX Runtime layer and the image-codecs layer.
        layers = []
        for layer in glob.get("Layers", []) + props.get("Layers", []):
            target = layer.get("Ref") if isinstance(layer, dict) else None
            if target not in stack.resources:
                raise RehearsalError(f"{logical}: layer {layer} is not a layer of this template")
            layers.append((stack.base / stack.resources[target]["Properties"]["ContentUri"]).resolve())
        runtime = merged.get("Runtime")
        if runtime != "provided.al2023" or merged.get("Handler") != "bootstrap":
            raise RehearsalError(f"{logical}: Runtime {runtime}, Handler {merged.get('Handler')}: "
                                 "the rehearsal runs provided.al2023's /var/task/bootstrap only")
        arch = merged.get("Architectures", ["x86_64"])
        if arch != ["x86_64"] or platform.machine() != "x86_64":
            raise RehearsalError(f"{logical}: Architectures {arch} on a {platform.machine()} machine")
        name = stack.physical[logical]
        alias = props.get("AutoPublishAlias")
        arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}" + (f":{alias}" if alias else "")
        specs[logical] = FunctionSpec(
            logical=logical, name=name, arn=arn,
            code=(stack.base / props["CodeUri"]).resolve(), layers=layers,
            memory_mb=int(stack.resolve(merged.get("MemorySize", 128))),
            timeout_s=int(stack.resolve(merged.get("Timeout", 3))),
            storage_mb=int(stack.resolve(merged.get("EphemeralStorage", {}).get("Size", 512))),
            env={k: str(v) for k, v in env.items()},
            events=stack.resolve(props.get("Events", {})),
            url="FunctionUrlConfig" in props,
        )
    return specs


def suffix(logical: str) -> str:
    """CloudFormation's random suffix, made deterministic per logical id."""
    return hashlib.sha256(logical.encode()).hexdigest()[:12].upper()


# ---------------------------------------------------------------------------------------------
# moto: the stack's S3 buckets and SQS queues.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(logs: Path) -> tuple[subprocess.Popen, str]:
    if not MOTO_PYTHON.exists():
        raise RehearsalError(f"{MOTO_PYTHON} is missing: run `make setup`")
    port = free_port()
    out = (logs / "moto.log").open("w")
    proc = subprocess.Popen([str(MOTO_PYTHON), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RehearsalError(f"moto did not start (see {logs / 'moto.log'})") from None
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def aws_clients(endpoint: str):
    import boto3
    from botocore.config import Config

    session = boto3.Session(aws_access_key_id="rehearsal", aws_secret_access_key="rehearsal",
                            region_name=REGION)
    s3 = session.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
    sqs = session.client("sqs", endpoint_url=endpoint)
    return s3, sqs


def create_stack(stack: Stack, s3, sqs) -> list[str]:
    """Creates the template's buckets and queues in moto and records their names and attributes;
    names the functions and the layer. Returns the rehearsal's departures from the template."""
    notes = []
    for logical in stack.of_type("AWS::S3::Bucket"):
        if not stack.created(logical):
            continue
        props = stack.resources[logical].get("Properties", {})
        # Resolved after the pseudo parameters exist; a computed BucketName is honoured.
        name = stack.resolve(props["BucketName"]) if "BucketName" in props else \
            f"{STACK}-{logical.lower()}-{suffix(logical).lower()}"
        s3.create_bucket(Bucket=name)
        stack.physical[logical] = name
        stack.attributes[(logical, "Arn")] = f"arn:aws:s3:::{name}"
        stack.attributes[(logical, "DomainName")] = f"{name}.s3.amazonaws.com"
    queues = stack.of_type("AWS::SQS::Queue")
    # Dead-letter queues first: a RedrivePolicy names its DLQ's ARN.
    queues.sort(key=lambda q: "RedrivePolicy" in stack.resources[q].get("Properties", {}))
    for logical in queues:
        props = stack.resources[logical].get("Properties", {})
        name = f"{STACK}-{logical}-{suffix(logical)}"
        attributes = {}
        if "VisibilityTimeout" in props:
            visibility = int(stack.resolve(props["VisibilityTimeout"]))
            attributes["VisibilityTimeout"] = str(REHEARSAL_VISIBILITY)
            notes.append(f"{logical}: VisibilityTimeout {REHEARSAL_VISIBILITY} s instead of the "
                         f"template's {visibility} s")
        if "MessageRetentionPeriod" in props:
            attributes["MessageRetentionPeriod"] = str(stack.resolve(props["MessageRetentionPeriod"]))
        if "RedrivePolicy" in props:
            redrive = stack.resolve(props["RedrivePolicy"])
            attributes["RedrivePolicy"] = json.dumps({
                "deadLetterTargetArn": redrive["deadLetterTargetArn"],
                "maxReceiveCount": int(redrive["maxReceiveCount"]),
            })
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        stack.physical[logical] = url
        stack.attributes[(logical, "Arn")] = arn
        stack.attributes[(logical, "QueueName")] = name
        stack.attributes[(logical, "QueueUrl")] = url
    for logical in stack.of_type("AWS::Serverless::Function"):
        props = stack.resources[logical].get("Properties", {})
        # A FunctionName the template sets is honoured (its log group is named after it).
        name = stack.resolve(props["FunctionName"]) if "FunctionName" in props else \
            f"{STACK}-{logical}-{suffix(logical)}"
        stack.physical[logical] = name
        stack.attributes[(logical, "Arn")] = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
    for logical in stack.of_type("AWS::Serverless::LayerVersion"):
        stack.physical[logical] = f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:{logical}:1"
    for logical in stack.of_type("AWS::Events::Rule"):
        stack.attributes[(logical, "Arn")] = f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{STACK}-{logical}"
    return notes


# ---------------------------------------------------------------------------------------------
# The Lambda Runtime API, one per sandbox, and the Function URL in front of it.


class Invocation:
    def __init__(self, payload: bytes, deadline_ms: int):
        self.id = str(uuid.uuid4())
        self.payload = payload
        self.deadline_ms = deadline_ms
        self.done = threading.Event()
        self.ok = False
        self.body = b""
        self.error_type = ""


class RuntimeApi:
    """The documented Lambda Runtime API for one sandbox, plus its Function URL front."""

    def __init__(self, spec: FunctionSpec):
        self.spec = spec
        self.pending: queue.Queue[Invocation] = queue.Queue()
        self.inflight: dict[str, Invocation] = {}
        self.ready = threading.Event()
        self.ready_at: float | None = None
        self.init_error: bytes | None = None
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # the function's own log is the one worth reading
                pass

            def body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def reply(self, status: int, body: bytes = b"", headers: dict | None = None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/2018-06-01/runtime/invocation/next":
                    if api.ready_at is None:
                        api.ready_at = time.monotonic()
                        api.ready.set()
                    inv = api.pending.get()
                    api.inflight[inv.id] = inv
                    self.reply(200, inv.payload, {
                        "Content-Type": "application/json",
                        "Lambda-Runtime-Aws-Request-Id": inv.id,
                        "Lambda-Runtime-Deadline-Ms": str(inv.deadline_ms),
                        "Lambda-Runtime-Invoked-Function-Arn": api.spec.arn,
                        "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0",
                    })
                else:
                    self.reply(404)

            def do_POST(self):
                body = self.body()
                m = re.fullmatch(r"/2018-06-01/runtime/invocation/([^/]+)/(response|error)", self.path)
                if m:
                    inv = api.inflight.pop(m.group(1), None)
                    if inv is None:
                        return self.reply(400, b'{"errorType":"InvalidRequestID"}')
                    inv.ok = m.group(2) == "response"
                    inv.body = body
                    inv.error_type = self.headers.get("Lambda-Runtime-Function-Error-Type", "")
                    inv.done.set()
                    return self.reply(202, b'{"status":"OK"}')
                if self.path == "/2018-06-01/runtime/init/error":
                    api.init_error = body
                    api.ready.set()
                    return self.reply(202, b'{"status":"OK"}')
                if api.spec.url:
                    return self.function_url(body)
                self.reply(404)

            def function_url(self, body: bytes):
                """A Function URL request: the payload v2 event in, the response shape out."""
                url_id = hashlib.sha256(api.spec.name.encode()).hexdigest()[:32]
                domain = f"{url_id}.lambda-url.{REGION}.on.aws"
                path, _, query = self.path.partition("?")
                now = time.time()
                text = body.decode("utf-8", "surrogateescape")
                binary = not self.headers.get("Content-Type", "").startswith(("application/json", "text/"))
                event = {
                    "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query,
                    "headers": {k.lower(): v for k, v in self.headers.items()} | {"host": domain},
                    "requestContext": {
                        "accountId": ACCOUNT, "apiId": url_id,
                        "authorizer": {"iam": {"accessKey": "AKIAREHEARSAL", "accountId": ACCOUNT,
                                               "callerId": "AIDAREHEARSAL", "cognitoIdentity": None,
                                               "principalOrgId": None,
                                               "userArn": f"arn:aws:iam::{ACCOUNT}:user/rehearsal",
                                               "userId": "AIDAREHEARSAL"}},
                        "domainName": domain, "domainPrefix": url_id,
                        "http": {"method": self.command, "path": path, "protocol": "HTTP/1.1",
                                 "sourceIp": self.client_address[0],
                                 "userAgent": self.headers.get("User-Agent", "")},
                        "requestId": str(uuid.uuid4()), "routeKey": "$default", "stage": "$default",
                        "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
                        "timeEpoch": int(now * 1000),
                    },
                    "body": base64.b64encode(body).decode() if binary else text,
                    "isBase64Encoded": binary,
                }
                inv = api.invoke(json.dumps(event).encode())
                if not inv.ok:
                    return self.reply(502, b'{"message":"Internal Server Error"}')
                out = json.loads(inv.body or b"null")
                if isinstance(out, dict) and "statusCode" in out:
                    payload = out.get("body") or ""
                    data = base64.b64decode(payload) if out.get("isBase64Encoded") else payload.encode()
                    return self.reply(int(out["statusCode"]), data, out.get("headers") or {})
                self.reply(200, json.dumps(out).encode(), {"Content-Type": "application/json"})

            do_PUT = do_DELETE = do_PATCH = do_POST

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def invoke(self, payload: bytes, timeout_s: float | None = None) -> Invocation:
        """Queues one invocation and waits for its answer for the function's Timeout."""
        timeout_s = timeout_s or self.spec.timeout_s
        inv = Invocation(payload, int((time.time() + timeout_s) * 1000))
        self.pending.put(inv)
        if not inv.done.wait(timeout_s + 1):
            inv.ok, inv.error_type = False, "Sandbox.Timedout"
            inv.body = json.dumps({"errorType": "Sandbox.Timedout",
                                   "errorMessage": f"no answer within Timeout {timeout_s} s"}).encode()
        return inv

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------------
# The sandbox: /var/task, /opt and /tmp in a private mount namespace, a memory/CPU cgroup.

SANDBOX_SCRIPT = r"""
set -eu
task="$1"; opt="$2"; tmp_mb="$3"; cgroup_procs="$4"
# Everything below happens in this process's own mount namespace; nothing propagates back.
mount --make-rprivate /
# /var/task may not exist on the host: a small tmpfs over /var (in here only) holds its mount
# point, as Lambda's /var holds little besides task/ and runtime/.
mount -t tmpfs -o size=1m,mode=0755 coldpath-var /var
mkdir /var/task /var/runtime
mount --bind "$task" /var/task
mount -o remount,bind,ro /var/task
mount --bind "$opt" /opt
mount -o remount,bind,ro /opt
mount -t tmpfs -o "size=${tmp_mb}m,mode=1777" coldpath-tmp /tmp
for procs in $cgroup_procs; do echo $$ > "$procs"; done
cd /var/task
exec /var/task/bootstrap
"""


class Cgroup:
    """A memory (and CPU) limit for one sandbox: cgroup v2 when this process is in one,
    otherwise v1's memory and cpu hierarchies."""

    def __init__(self, name: str, memory_mb: int, tmp_mb: int = 0):
        """CPU in proportion to `memory_mb`, as Lambda gives it; memory `memory_mb` plus
        `tmp_mb` for a /tmp whose tmpfs pages this cgroup is charged for (Lambda's /tmp is disk,
        not the function's memory)."""
        self.dirs: list[Path] = []
        self.procs = ""
        self.peak_file: Path | None = None
        self.description = "none (no writable cgroup)"
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        own = {}
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else ["unified"]:
                own[c] = path
        memory = (memory_mb + tmp_mb) * 1024 * 1024
        quota = int(100_000 * memory_mb / MB_PER_VCPU)
        limit = f"{memory_mb} MiB" + (f" + {tmp_mb} MiB for the tmpfs /tmp" if tmp_mb else "")
        try:
            if v2.exists():
                d = Path("/sys/fs/cgroup") / own["unified"].lstrip("/") / name
                d.mkdir(exist_ok=True)
                self.dirs.append(d)
                (d / "memory.max").write_text(str(memory))
                (d / "memory.swap.max").write_text("0")
                try:
                    (d / "cpu.max").write_text(f"{quota} 100000")
                    cpu = f", cpu.max {quota}/100000"
                except OSError:
                    cpu = ""
                self.procs = str(d / "cgroup.procs")
                self.peak_file = d / "memory.peak"
                self.description = f"cgroup v2 memory.max {limit}, no swap{cpu}"
            elif Path("/sys/fs/cgroup/memory").is_dir():
                d = Path("/sys/fs/cgroup/memory") / own.get("memory", "/").lstrip("/") / name
                d.mkdir(exist_ok=True)
                self.dirs.append(d)
                (d / "memory.limit_in_bytes").write_text(str(memory))
                try:
                    (d / "memory.memsw.limit_in_bytes").write_text(str(memory))
                    swap = ", no swap"
                except OSError:
                    swap = ""
                self.peak_file = d / "memory.max_usage_in_bytes"
                procs = [str(d / "cgroup.procs")]
                cpu = ""
                cpu_root = Path("/sys/fs/cgroup/cpu")
                if cpu_root.is_dir():
                    c = cpu_root / own.get("cpu", "/").lstrip("/") / name
                    c.mkdir(exist_ok=True)
                    self.dirs.append(c)
                    (c / "cpu.cfs_period_us").write_text("100000")
                    (c / "cpu.cfs_quota_us").write_text(str(quota))
                    procs.append(str(c / "cgroup.procs"))
                    cpu = f", cpu quota {quota / 100_000:.2f} vCPU"
                # The sandbox script writes its pid to each hierarchy in turn.
                self.procs = " ".join(procs)
                self.description = f"cgroup v1 memory.limit_in_bytes {limit}{swap}{cpu}"
        except OSError as err:
            self.close()
            self.description = f"none ({err})"
            self.procs = ""

    def peak_mb(self) -> float | None:
        try:
            return int(self.peak_file.read_text()) / 1024 / 1024 if self.peak_file else None
        except OSError:
            return None

    def close(self):
        for d in reversed(self.dirs):
            try:
                d.rmdir()
            except OSError:
                pass
        self.dirs = []


def unzip(zip_path: Path, dest: Path) -> None:
    """Unpacks like Lambda does: files with their modes from the zip."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with zipfile.ZipFile(zip_path) as z:
        for info in z.infolist():
            out = z.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(out, mode)


@dataclass
class Sandbox:
    spec: FunctionSpec
    api: RuntimeApi
    proc: subprocess.Popen
    cgroup: Cgroup
    log_path: Path
    started: float
    peak_rss_mb: float | None = None
    cgroup_peak_mb: float | None = None
    tmp_used: str = ""
    tmp_files: list[str] = field(default_factory=list)

    def wait_ready(self) -> float:
        """Seconds from spawn to the runtime's first /next; raises on an init failure."""
        deadline = time.monotonic() + INIT_LIMIT_S
        while not self.api.ready.wait(0.2):
            if self.proc.poll() is not None:
                raise RehearsalError(f"{self.spec.logical}: bootstrap exited {self.proc.returncode} "
                                     f"during init:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RehearsalError(f"{self.spec.logical}: no /next within {INIT_LIMIT_S} s:\n{self.tail()}")
        if self.api.init_error is not None:
            raise RehearsalError(f"{self.spec.logical}: init error {self.api.init_error.decode()}\n{self.tail()}")
        return self.api.ready_at - self.started

    def cold_start(self) -> dict | None:
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("message") == "cold start":
                return rec
        return None

    def tail(self, n: int = 15) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join("    " + line for line in lines[-n:])

    def stop(self) -> None:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            hwm = re.search(r"VmHWM:\s+(\d+) kB", status)
            self.peak_rss_mb = int(hwm.group(1)) / 1024 if hwm else None
        except OSError:
            pass
        try:
            # The sandbox's /tmp, seen through its own mount namespace.
            self.tmp_used = subprocess.run(
                ["nsenter", "-t", str(self.proc.pid), "-m", "du", "-sh", "/tmp"],
                capture_output=True, text=True, timeout=10).stdout.split("\t")[0]
            self.tmp_files = subprocess.run(
                ["nsenter", "-t", str(self.proc.pid), "-m", "find", "/tmp", "-type", "f"],
                capture_output=True, text=True, timeout=10).stdout.split()
        except (OSError, subprocess.SubprocessError):
            pass
        self.cgroup_peak_mb = self.cgroup.peak_mb()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.api.close()
        self.cgroup.close()


def lambda_env(spec: FunctionSpec, api: RuntimeApi, endpoint: str) -> dict[str, str]:
    """What Lambda gives a provided.al2023 sandbox, then the template's variables, then the two
    the rehearsal needs to reach moto."""
    env = {
        "AWS_LAMBDA_FUNCTION_NAME": spec.name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_FUNCTION_VERSION": "1" if spec.arn.count(":") == 7 else "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": time.strftime("%Y/%m/%d/[1]") + uuid.uuid4().hex,
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{api.port}",
        "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "rehearsal", "AWS_SECRET_ACCESS_KEY": "rehearsal",
        "AWS_SESSION_TOKEN": "rehearsal",
        "LAMBDA_TASK_ROOT": "/var/task", "LAMBDA_RUNTIME_DIR": "/var/runtime", "_HANDLER": "bootstrap",
        "LANG": "en_US.UTF-8", "TZ": ":UTC",
        "PATH": "/usr/local/bin:/usr/bin/:/bin:/opt/bin",
        "LD_LIBRARY_PATH": "/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib",
    }
    env.update(spec.env)
    env["AWS_ENDPOINT_URL"] = endpoint
    env["COLDPATH_S3_FORCE_PATH_STYLE"] = "true"
    return env


def start_sandbox(spec: FunctionSpec, endpoint: str, logs: Path, layer_dir: Path,
                  tmp_in_memory_limit: bool = False, extra_env: dict | None = None) -> Sandbox:
    task = WORK / "sandboxes" / spec.logical / "task"
    unzip(spec.code, task)
    api = RuntimeApi(spec)
    cgroup = Cgroup(f"{STACK}-{spec.logical}", spec.memory_mb,
                    spec.storage_mb if tmp_in_memory_limit else 0)
    log_path = logs / f"{spec.logical}.log"
    cmd = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", SANDBOX_SCRIPT,
           "sandbox", str(task), str(layer_dir), str(spec.storage_mb), cgroup.procs]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env={**lambda_env(spec, api, endpoint), **(extra_env or {})},
                            stdin=subprocess.DEVNULL,
                            stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    return Sandbox(spec, api, proc, cgroup, log_path, started)


# ---------------------------------------------------------------------------------------------
# Events, built from the real upload.


def head(s3, bucket: str, key: str) -> dict:
    return s3.head_object(Bucket=bucket, Key=key)


def s3_notification(bucket: str, key: str, meta: dict) -> dict:
    now = time.gmtime()
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": REGION,
        "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", now), "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AWS:AIDAREHEARSAL"},
        "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": uuid.uuid4().hex[:16].upper(), "x-amz-id-2": "rehearsal"},
        "s3": {
            "s3SchemaVersion": "1.0", "configurationId": "PhotoUploaded",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "AREHEARSAL"},
                       "arn": f"arn:aws:s3:::{bucket}"},
            # S3 notifications carry the key URL-encoded, spaces as '+'.
            "object": {"key": urllib.parse.quote_plus(key, safe="/"), "size": meta["ContentLength"],
                       "eTag": meta["ETag"].strip('"'), "sequencer": f"{int(time.time() * 1e6):X}"},
        },
    }]}


def eventbridge_object_created(bucket: str, key: str, meta: dict) -> dict:
    return {
        "version": "0", "id": str(uuid.uuid4()), "detail-type": "Object Created", "source": "aws.s3",
        "account": ACCOUNT, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": REGION, "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0", "bucket": {"name": bucket},
            "object": {"key": key, "size": meta["ContentLength"], "etag": meta["ETag"].strip('"'),
                       "sequencer": f"{int(time.time() * 1e6):X}"},
            "request-id": uuid.uuid4().hex[:16].upper(), "requester": ACCOUNT,
            "source-ip-address": "127.0.0.1", "reason": "PutObject",
        },
    }


def pattern_matches(pattern, value) -> bool:
    """EventBridge's matching for the subset the template uses: nested objects, lists of exact
    values, and {"prefix": ...}."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            k in value and pattern_matches(v, value[k]) for k, v in pattern.items())
    if isinstance(pattern, list):
        for p in pattern:
            if isinstance(p, dict) and "prefix" in p:
                if isinstance(value, str) and value.startswith(p["prefix"]):
                    return True
            elif p == value:
                return True
        return False
    raise RehearsalError(f"EventBridge pattern element {pattern!r} is not modelled")


def s3_filter_matches(props: dict, key: str) -> bool:
    for rule in props.get("Filter", {}).get("S3Key", {}).get("Rules", []):
        name, value = rule["Name"].lower(), rule["Value"]
        if name == "prefix" and not key.startswith(value):
            return False
        if name == "suffix" and not key.endswith(value):
            return False
    events = props.get("Events")
    events = events if isinstance(events, list) else [events]
    return any(e in ("s3:ObjectCreated:*", "s3:ObjectCreated:Put") for e in events)


def sqs_event(messages: list[dict], queue_arn: str) -> dict:
    return {"Records": [{
        "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
        "attributes": {k: v for k, v in m.get("Attributes", {}).items()
                       if k in ("ApproximateReceiveCount", "SentTimestamp", "SenderId",
                                "ApproximateFirstReceiveTimestamp", "MessageGroupId",
                                "MessageDeduplicationId", "SequenceNumber",
                                "AWSTraceHeader")},
        "messageAttributes": {
            k: {"stringValue": v.get("StringValue"), "binaryValue": v.get("BinaryValue"),
                "stringListValues": [], "binaryListValues": [], "dataType": v["DataType"]}
            for k, v in m.get("MessageAttributes", {}).items()},
        "md5OfBody": m["MD5OfBody"], "eventSource": "aws:sqs", "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    } for m in messages]}


def find_key(node, key: str):
    """The first value under `key` anywhere in a JSON document (results may be wrapped)."""
    if isinstance(node, dict):
        if key in node:
            return node[key]
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            found = find_key(item, key)
            if found is not None:
                return found
    return None


def result_key(sink: str, function: str, bucket: str, key: str) -> str:
    """Where the sink writes the result of the photo s3://bucket/key: <prefix>/<function>/<bucket>/<key>.json
    (shared/aws's sink and photo_result_id), so the rehearsal checks the exact place the
    template's IAM statements allow."""
    prefix = urllib.parse.urlparse(sink).path.strip("/")
    return "/".join(p for p in (prefix, function, bucket, key) if p) + ".json"


def list_results(s3, bucket: str, prefix: str) -> list[str]:
    out = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in out.get("Contents", [])]


def published_bundle_problems(s3, model_source: str, digests: dict[str, str]) -> list[str]:
    """What is wrong with the bundle where captioning will look for it (its
    CAPTIONING_MODEL_SOURCE, s3://bucket/prefix): each pinned file must be there, with the
    digest CAPTIONING_MODEL_SHA256 pins. Empty when the function would find its model."""
    source = urllib.parse.urlparse(model_source)
    if source.scheme != "s3":
        return [f"CAPTIONING_MODEL_SOURCE {model_source} is not an s3:// location"]
    problems = []
    for name, want in digests.items():
        key = f"{source.path.strip('/')}/{name}"
        try:
            body = s3.get_object(Bucket=source.netloc, Key=key)["Body"].read()
        except Exception as err:  # botocore's ClientError: NoSuchKey, NoSuchBucket
            problems.append(f"s3://{source.netloc}/{key}: {err}")
            continue
        got = hashlib.sha256(body).hexdigest()
        if got != want:
            problems.append(f"s3://{source.netloc}/{key}: sha256 {got}, pinned {want}")
    return problems


def rehearse_publish_then_switch(report: "Report", stack: "Stack", s3, endpoint: str, deploy,
                                 bundles: list[Path], clip_bundle: Path) -> None:
    """`make deploy`'s publish-then-switch (tools/deploy.py publish_then_switch) run for each of
    `bundles` in turn, the first on a stack that does not exist yet, against moto's S3. Each
    `sam deploy` is played by resolving the template with the parameters it would pass, and at
    that moment every file captioning's CAPTIONING_MODEL_SOURCE then names must already be in
    the bucket with the digest CAPTIONING_MODEL_SHA256 pins; after each switch the previous
    bundle's objects must still be where they were. The CLIP bundle goes with each deploy, as
    `make deploy CLIP_MODEL=...` publishes it: every file both towers' hosts then name
    (CLIP_MODEL_SOURCE of the clip and the embeddings function) must be there with its pin."""
    report.notes.append("make deploy's order: each sam deploy is played by resolving the template with "
                        "the parameters it would pass, not by CloudFormation")
    template = stack.template
    deployed: dict = {"params": None}
    switches: list[str] = []
    problems: list[str] = []
    published: list[tuple[str, dict[str, str]]] = []  # (source, digests) of each bundle

    def resolved(params: dict) -> "Stack":
        return Stack(template, params, stack.stack_id, stack.base, stack.physical, stack.attributes)

    def outputs_of():
        if deployed["params"] is None:
            return None
        s = resolved(deployed["params"])
        return {k: str(s.resolve(v["Value"])) for k, v in template["Outputs"].items()
                if k in ("ModelBucketName", "CaptioningModelPrefix", "CaptioningModelVersion",
                         "ClipModelPrefix")}

    def sam_deploy(pin: list[str]) -> None:
        params = parameter_defaults(template)
        params.update(dict(kv.split("=", 1) for kv in pin))
        specs = function_specs(resolved(params))
        # Both towers' hosts name the CLIP bundle: it must be in place before either does.
        for logical in ("PhotoVectorsFunction", "EmbeddingsFunction"):
            clip_env = specs[logical].env
            clip_source, clip_pinned = clip_env.get("CLIP_MODEL_SOURCE", ""), clip_env.get("CLIP_MODEL_SHA256", "")
            if clip_pinned:
                items = clip_pinned.split(",")
                malformed = [i for i in items if "=" not in i]
                if malformed:
                    problems.append(f"{logical}'s CLIP_MODEL_SHA256 is not file=hex,...: {malformed}")
                clip_pins = dict(i.split("=", 1) for i in items if "=" in i)
                problems.extend(f"when the stack named {clip_source} ({logical}): {m}"
                                for m in published_bundle_problems(s3, clip_source, clip_pins))
        env = specs["CaptioningFunction"].env
        source, pinned = env.get("CAPTIONING_MODEL_SOURCE", ""), env.get("CAPTIONING_MODEL_SHA256", "")
        if pinned:
            digests = dict(item.split("=", 1) for item in pinned.split(","))
            missing = published_bundle_problems(s3, source, digests)
            problems.extend(f"when the stack named {source}: {m}" for m in missing)
            # What the previous switch named must still be there: its cold starts go on until
            # this deploy completes.
            for old_source, old_digests in published:
                problems.extend(f"previous bundle: {m}" for m in
                                published_bundle_problems(s3, old_source, old_digests))
            if (source, digests) not in published:
                published.append((source, digests))
            switches.append(source)
        else:
            switches.append("(no bundle named)")
        deployed["params"] = params

    clip_pins = deploy.clip_digests(clip_bundle)
    clip = (clip_pins, lambda bucket, prefix: deploy.publish_bundle(
        clip_bundle, clip_pins, bucket, prefix, REGION, endpoint_url=endpoint))
    for bundle in bundles:
        digests = deploy.bundle_digests(bundle)
        deploy.publish_then_switch(
            digests, outputs_of, sam_deploy,
            lambda bucket, prefix, bundle=bundle, digests=digests: deploy.publish_bundle(
                bundle, digests, bucket, prefix, REGION, endpoint_url=endpoint),
            clip=clip)
    versioned = all(deploy.bundle_version(d) in src for src, d in published)
    # make deploy's own entry point on the random-weight fixture, without ALLOW_RANDOM_WEIGHTS:
    # refused before anything runs (a dry run, so nothing could reach AWS either way).
    refused = deploy.main(["--captioning-model", str(CAPTIONING_FIXTURE), "--dry-run", "--skip-package"]) == 1
    # And the CLIP fixture beside a captioning bundle it accepts (a copy outside the fixtures).
    clip_refused = deploy.main(["--captioning-model", str(bundles[0]), "--clip-model", str(clip_bundle),
                                "--dry-run", "--skip-package"]) == 1
    refused = refused and clip_refused
    ok = not problems and len(published) == len(bundles) and versioned and refused
    report.step("make deploy publishes, then switches", ok,
                f"{len(bundles)} bundles deployed in turn, the first to no stack; the stack's sam deploys named: "
                f"{'; '.join(switches)}; " + ("; ".join(problems) if problems else
                "every file present with its pinned digest when the stack first named it, and every earlier "
                "bundle still in place after the next switch")
                + ("" if versioned else "; a source is not named by its bundle's version")
                + f"; the random-weight fixtures without ALLOW_RANDOM_WEIGHTS: {'refused' if refused else 'NOT refused'}"
                + ("" if clip_refused else " (the CLIP fixture was accepted)"))


def s3_routes(events: dict, bucket: str, key: str) -> list[dict]:
    """The S3 events of a function that fire for an upload of s3://bucket/key."""
    return [e["Properties"] for e in events.values()
            if e["Type"] == "S3" and e["Properties"]["Bucket"] == bucket
            and s3_filter_matches(e["Properties"], key)]


def eventbridge_routes(stack: "Stack", queue_arn: str, event: dict) -> list[str]:
    """The rules of the template that deliver `event` to the queue `queue_arn`."""
    rules = [r for r in stack.of_type("AWS::Events::Rule")
             if any(t["Arn"] == queue_arn for t in stack.resolve(stack.resources[r]["Properties"]["Targets"]))]
    return [r for r in rules
            if pattern_matches(stack.resolve(stack.resources[r]["Properties"]["EventPattern"]), event)]


def eventbridge_function_routes(stack: "Stack", function_arn: str, event: dict) -> list[str]:
    """The rules of the template that would invoke the function `function_arn` with `event`:
    the rule targets it, its pattern matches, and an AWS::Lambda::Permission lets
    events.amazonaws.com invoke it from that rule (without one, EventBridge's deliveries are
    refused and, after its retries, dead-lettered)."""
    def permitted(rule: str) -> bool:
        rule_arn = stack.attributes[(rule, "Arn")]
        for p in stack.of_type("AWS::Lambda::Permission"):
            props = stack.resolve(stack.resources[p]["Properties"])
            if (props.get("FunctionName") in (function_arn, function_arn.rsplit(":", 1)[-1])
                    and props.get("Principal") == "events.amazonaws.com"
                    and props.get("Action") == "lambda:InvokeFunction"
                    and props.get("SourceArn") == rule_arn):
                return True
        return False
    rules = [r for r in stack.of_type("AWS::Events::Rule")
             if any(t["Arn"] == function_arn for t in stack.resolve(stack.resources[r]["Properties"]["Targets"]))]
    return [r for r in rules
            if pattern_matches(stack.resolve(stack.resources[r]["Properties"]["EventPattern"]), event)
            and permitted(r)]


def put_allowed(stack: "Stack", logical: str, bucket: str, key: str, action: str = "s3:PutObject") -> bool:
    """Whether the function's own SAM `Policies` allow `action` (s3:PutObject) on s3://bucket/key
    (moto enforces no IAM, so the rehearsal holds the place a result was written to, or a model
    read from, to the policy that would let Lambda do it)."""
    import fnmatch
    arn = f"arn:aws:s3:::{bucket}/{key}"
    for policy in stack.resources[logical]["Properties"].get("Policies", []):
        if not isinstance(policy, dict):
            continue
        for st in stack.resolve(policy.get("Statement") or []):
            actions = st.get("Action", [])
            actions = actions if isinstance(actions, list) else [actions]
            resources = st.get("Resource", [])
            resources = resources if isinstance(resources, list) else [resources]
            if (st.get("Effect") == "Allow" and action in actions
                    and any(fnmatch.fnmatchcase(arn, r) for r in resources)):
                return True
    return False


# The host paths a sandbox mounts over inside its own namespace.
SANDBOX_MOUNT_POINTS = ("/var", "/var/task", "/var/runtime", "/opt", "/tmp")


def host_state() -> dict:
    """What the sandboxes must leave alone, seen from this process (the host's mount
    namespace): its mount table, and whether /var/task exists. (Not the host's /tmp contents:
    other work on a shared machine writes there; a sandbox /tmp that leaked would show as a
    mount.)"""
    mounts = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        # mount point, then the filesystem type and source after the " - " separator.
        tail = line.split(" - ", 1)[1].split() if " - " in line else []
        mounts.add((fields[4], *tail[:2]))
    return {"mounts": mounts, "var_task": Path("/var/task").exists()}


def host_changes(before: dict, after: dict) -> list[str]:
    """How the host changed between two host_state() snapshots in the ways a sandbox that
    escaped its mount namespace would change it."""
    changes = [f"new mount {point} ({fstype} {source})"
               for point, fstype, source in sorted(after["mounts"] - before["mounts"])
               if point in SANDBOX_MOUNT_POINTS or source.startswith("coldpath-")
               or point.startswith(str(WORK.resolve()))]
    if before["var_task"] != after["var_task"]:
        changes.append(f"/var/task {'appeared' if after['var_task'] else 'disappeared'}")
    return changes


# ---------------------------------------------------------------------------------------------
# The steps.


# ---------------------------------------------------------------------------------------------
# The bulk pool's controller (infra/gpu/batch.yaml PoolController) in an account with no GPU
# quota. moto's Batch runs jobs in Docker containers (none here) and has no vCPU quota, so it
# cannot hold a job RUNNABLE: Batch is ZeroQuotaBatch below, which accepts submissions and never
# starts them, and the Batch and CloudWatch events are driven into the controller's handler by
# this script. botocore 1.43 speaks CloudWatch's JSON protocol, which moto 5.2.5 does not serve,
# so the alarms' states are AlarmStates below, set by the script. The controller's own code (the
# template's ZipFile) and its resolved environment run unchanged; the captioning Lambda's
# configuration, its SQS event source mapping and the caption queue are real calls to moto.

POOL_TEMPLATE = ROOT / "infra" / "gpu" / "batch.yaml"


class ZeroQuotaBatch:
    """AWS Batch where no instance can be launched: every submitted array stays PENDING with its
    children RUNNABLE (the parent of an array never shows RUNNING; its statusSummary counts the
    children), until the script moves a child or the controller cancels the job."""

    def __init__(self, queue_arn: str, clock):
        self.queue_arn, self.clock = queue_arn, clock
        self.jobs: dict[str, dict] = {}
        self.submitted: list[dict] = []
        self.cancelled: list[str] = []

    def _summary(self, job: dict) -> dict:
        counts: dict[str, int] = {}
        for s in job["children"]:
            counts[s] = counts.get(s, 0) + 1
        return counts

    def submit_job(self, **kw) -> dict:
        if kw["jobQueue"] != self.queue_arn:
            raise RehearsalError(f"controller submitted to {kw['jobQueue']}, not the bulk queue")
        job_id = str(uuid.uuid4())
        size = int(kw["arrayProperties"]["size"])
        self.jobs[job_id] = {"jobId": job_id, "jobName": kw["jobName"], "status": "PENDING",
                             "createdAt": int(self.clock() * 1000), "children": ["RUNNABLE"] * size}
        self.submitted.append(kw)
        return {"jobId": job_id, "jobName": kw["jobName"]}

    def get_paginator(self, name: str):
        if name != "list_jobs":
            raise RehearsalError(f"controller asked for a {name} paginator")
        return self

    def paginate(self, jobQueue: str, jobStatus: str):
        yield {"jobSummaryList": [{"jobId": j["jobId"], "jobName": j["jobName"]} for j in self.jobs.values()
                                  if jobQueue == self.queue_arn and j["status"] == jobStatus]}

    def describe_jobs(self, jobs: list[str]) -> dict:
        out = []
        for job_id in jobs:
            j = self.jobs[job_id]
            out.append({"jobId": job_id, "jobName": j["jobName"], "status": j["status"],
                        "createdAt": j["createdAt"],
                        "arrayProperties": {"size": len(j["children"]), "statusSummary": self._summary(j)}})
        return {"jobs": out}

    def cancel_job(self, jobId: str, reason: str) -> dict:
        j = self.jobs[jobId]
        if j["status"] in ("SUBMITTED", "PENDING", "RUNNABLE"):
            j["status"] = "FAILED"
            j["children"] = ["FAILED"] * len(j["children"])
            self.cancelled.append(jobId)
        return {}

    def child_event(self, job_id: str, index: int, status: str) -> dict:
        """Moves one child and returns the Batch Job State Change event EventBridge would deliver."""
        self.jobs[job_id]["children"][index] = status
        return {"source": "aws.batch", "detail-type": "Batch Job State Change",
                "detail": {"jobId": f"{job_id}:{index}", "jobQueue": self.queue_arn, "status": status,
                           "arrayProperties": {"index": index}}}


class AlarmStates:
    """CloudWatch's DescribeAlarms over states the script sets."""

    def __init__(self, states: dict[str, str]):
        self.states = states

    def describe_alarms(self, AlarmNames: list[str]) -> dict:
        return {"MetricAlarms": [{"AlarmName": n, "StateValue": self.states[n]}
                                 for n in AlarmNames if n in self.states]}


def alarm_event(alarm_name: str, alarm_arn: str, state: str) -> dict:
    return {"source": "aws.cloudwatch", "detail-type": "CloudWatch Alarm State Change",
            "resources": [alarm_arn], "detail": {"alarmName": alarm_name, "state": {"value": state}}}


def rehearse_pool(report: "Report", stack: "Stack", cap_spec, endpoint: str, queue_arn: str,
                  queue_url: str, sqs) -> str:
    """The zero-quota day: a backlog alarm submits workers that never start. The Lambda consumer
    must never be stepped aside meanwhile, the submission must be cancelled once past
    StartBoundMinutes, a worker that does run must step it aside and one that stops must hand the
    queue back, and every message must still be in the queue for the Lambda afterwards. Returns
    the mapping's state at the end: the captioning steps consume only if it is Enabled."""
    import importlib.util

    import boto3

    report.notes.append("GPU pool: Batch is ZeroQuotaBatch (jobs accepted, never started) and the alarms' "
                        "states are set by the script; Batch and CloudWatch events are driven into "
                        "PoolController's handler, its clock moved past StartBoundMinutes by the script")

    session = boto3.Session(aws_access_key_id="rehearsal", aws_secret_access_key="rehearsal",
                            region_name=REGION)
    lam = session.client("lambda", endpoint_url=endpoint)
    iam = session.client("iam", endpoint_url=endpoint)
    # The captioning function as deployed (its resolved environment carries the model pin) and
    # its SQS event source mapping; moto needs a zip and a role, neither of which runs.
    role = iam.create_role(RoleName="rehearsal-captioning", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                "Principal": {"Service": "lambda.amazonaws.com"}}]}))["Role"]["Arn"]
    code = WORK / "captioning-placeholder.zip"
    with zipfile.ZipFile(code, "w") as zf:
        zf.writestr("bootstrap", "")
    lam.create_function(FunctionName=cap_spec.name, Runtime="provided.al2023", Role=role,
                        Handler="bootstrap", Code={"ZipFile": code.read_bytes()},
                        Environment={"Variables": cap_spec.env})
    mapping = lam.create_event_source_mapping(EventSourceArn=queue_arn, FunctionName=cap_spec.name,
                                              BatchSize=1, Enabled=True)["UUID"]

    pool_template = load_template(POOL_TEMPLATE)
    params = parameter_defaults(pool_template)
    params.update(CaptioningFunctionName=cap_spec.name, CaptioningEventSourceMappingId=mapping,
                  CaptionQueueName=queue_arn.rsplit(":", 1)[1], CaptionQueueArn=queue_arn,
                  CaptionQueueUrl=queue_url)
    pool = Stack(pool_template, params, stack.stack_id.replace(STACK, STACK + "-pool"), POOL_TEMPLATE.parent)
    job_queue = f"arn:aws:batch:{REGION}:{ACCOUNT}:job-queue/BulkJobQueue-{suffix('BulkJobQueue')}"
    pool.physical.update(
        BulkJobQueue=job_queue,
        BulkJobDefinition=f"arn:aws:batch:{REGION}:{ACCOUNT}:job-definition/{STACK}-caption-bulk:1")
    for alarm in pool.of_type("AWS::CloudWatch::Alarm"):
        name = f"{STACK}-pool-{alarm}-{suffix(alarm)}"
        pool.physical[alarm] = name
        pool.attributes[(alarm, "Arn")] = f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name}"
    controller = pool.resources["PoolController"]["Properties"]
    env = {k: str(v) for k, v in pool.resolve(controller["Environment"]["Variables"]).items()}

    # The controller's own code, loaded as Lambda would (index.handler), its boto3 clients on moto.
    now = [time.time()]
    saved = {k: os.environ.get(k) for k in [*env, "AWS_ENDPOINT_URL"]}
    os.environ.update(env, AWS_ENDPOINT_URL=endpoint)
    try:
        source = WORK / "pool-controller" / "index.py"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(controller["Code"]["ZipFile"])
        spec = importlib.util.spec_from_file_location("pool_controller", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        batch = ZeroQuotaBatch(job_queue, lambda: now[0])
        module.batch = batch
        alarms = AlarmStates({name: "OK" for name in
                              (pool.physical[a] for a in pool.of_type("AWS::CloudWatch::Alarm"))})
        module.cw = alarms
        module.time = type("Clock", (), {"time": staticmethod(lambda: now[0])})

        def consumer() -> str:
            return lam.get_event_source_mapping(UUID=mapping)["State"]

        def handle(event: dict) -> str:
            module.handler(event)
            return consumer()

        waiting = int(sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
                      ["Attributes"]["ApproximateNumberOfMessages"])
        bulk = pool.physical["BulkBacklogAlarm"]
        seen = [handle(alarm_event(bulk, pool.attributes[("BulkBacklogAlarm", "Arn")], "ALARM"))]
        # EventBridge delivers at least once: the same ALARM again must not submit a second array.
        seen.append(handle(alarm_event(bulk, pool.attributes[("BulkBacklogAlarm", "Arn")], "ALARM")))
        pin = {k: cap_spec.env.get(k) for k in ("CAPTIONING_MODEL_SOURCE", "CAPTIONING_MODEL_SHA256")}
        sent = {e["name"]: e["value"] for s in batch.submitted
                for e in s.get("containerOverrides", {}).get("environment", [])}
        job_ids = list(batch.jobs)
        if job_ids:
            seen.append(handle(batch.child_event(job_ids[0], 0, "RUNNABLE")))
        bound_min = int(env["START_BOUND_MINUTES"])
        now[0] += (bound_min - 1) * 60
        seen.append(handle({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}))
        before_bound = list(batch.cancelled)
        now[0] += 2 * 60
        seen.append(handle({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}))
        ok = (len(batch.submitted) == 1 and sent == pin and all(s == "Enabled" for s in seen)
              and not before_bound and batch.cancelled == job_ids)
        report.step("bulk pool, no GPU quota: the Lambda consumer keeps the queue", ok,
                    f"backlog alarm -> {len(batch.submitted)} submission(s) of {env['WORKERS']} workers "
                    f"with the Lambda's model pin: {'yes' if sent == pin else f'no ({sent} vs {pin})'}; "
                    f"event source mapping after the alarm (delivered twice), a RUNNABLE change and two schedules: "
                    f"{', '.join(seen)}; "
                    f"cancelled before {bound_min} min: {before_bound or 'none'}, after: {batch.cancelled or 'none'}")

        # A worker that does start: the Lambda steps aside, and takes the queue back when the
        # worker's instance is lost and its retry waits RUNNABLE again.
        handle(alarm_event(bulk, pool.attributes[("BulkBacklogAlarm", "Arn")], "ALARM"))
        job = [j for j in batch.jobs if j not in job_ids][0]
        handle(batch.child_event(job, 0, "STARTING"))
        aside = handle(batch.child_event(job, 0, "RUNNING"))
        stalled_name = pool.physical["StalledQueueAlarm"]
        alarms.states[stalled_name] = "ALARM"
        stalled = handle(alarm_event(stalled_name, pool.attributes[("StalledQueueAlarm", "Arn")], "ALARM"))
        alarms.states[stalled_name] = "OK"
        again = handle(alarm_event(stalled_name, pool.attributes[("StalledQueueAlarm", "Arn")], "OK"))
        back = handle(batch.child_event(job, 0, "RUNNABLE"))
        report.step("bulk pool: the Lambda steps aside only while a worker runs",
                    (aside, stalled, again, back) == ("Disabled", "Enabled", "Disabled", "Enabled")
                    and len(batch.submitted) == 2,
                    f"a worker RUNNING -> mapping {aside} (want Disabled); the stalled-queue alarm in ALARM "
                    f"while it runs -> {stalled} (want Enabled), back to OK -> {again} (want Disabled); "
                    f"the worker's retry back to RUNNABLE -> {back} (want Enabled)")
        left = int(sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
                   ["Attributes"]["ApproximateNumberOfMessages"])
        report.step("bulk pool: no message lost", left == waiting and consumer() == "Enabled",
                    f"{left} of {waiting} messages still visible to the Lambda consumer, mapping {consumer()}")
        batch.cancel_job(jobId=job, reason="rehearsal over")
        state = consumer()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    # The script plays the mapping for the captioning sandbox below; moto's own would try to
    # invoke the function through Docker on the next message sent.
    lam.delete_event_source_mapping(UUID=mapping)
    return state


class Report:
    def __init__(self):
        self.steps: list[tuple[str, bool, str]] = []
        self.cold: list[dict] = []
        self.notes: list[str] = [
            "AWS_ENDPOINT_URL=<moto> and COLDPATH_S3_FORCE_PATH_STYLE=true added to every function's env",
            "Function URL IAM (SigV4) auth is not verified; S3 notification and EventBridge delivery "
            "are made by this script from the real upload",
        ]

    def step(self, name: str, ok: bool, detail: str) -> bool:
        self.steps.append((name, ok, detail))
        log(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
        return ok

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(ok for _, ok, _ in self.steps)


def sam_lines(out: subprocess.CompletedProcess) -> list[str]:
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    return [line.strip() for line in text.splitlines() if line.strip()]


def summary(lines: list[str], wanted: str) -> str:
    return next((line for line in lines if wanted in line), lines[-1] if lines else "")


def run_sam(report: Report) -> Path | None:
    """`sam validate --lint` and `sam build`; returns the built template (what `sam deploy`
    would deploy), or None when the build failed."""
    sam = DEPLOY_BIN / "sam"
    if not sam.exists():
        raise RehearsalError(f"{sam} is missing: run `make setup-deploy`")
    env = dict(os.environ, SAM_CLI_TELEMETRY="0", AWS_REGION=REGION, AWS_DEFAULT_REGION=REGION,
               AWS_ACCESS_KEY_ID="rehearsal", AWS_SECRET_ACCESS_KEY="rehearsal")
    env["PATH"] = f"{DEPLOY_BIN}{os.pathsep}{env.get('PATH', '')}"
    t = time.monotonic()
    out = subprocess.run([str(sam), "validate", "--lint", "--template-file", str(TEMPLATE)],
                         env=env, capture_output=True, text=True, timeout=300)
    text = sam_lines(out)
    report.step("sam validate --lint", out.returncode == 0,
                f"{summary(text, 'valid')} ({time.monotonic() - t:.1f} s)"
                + ("" if out.returncode == 0 else "\n" + "\n".join(text[-20:])))
    build_dir = WORK / "sam-build"
    t = time.monotonic()
    out = subprocess.run([str(sam), "build", "--template-file", str(TEMPLATE), "--build-dir",
                          str(build_dir), "--beta-features"],
                         env=env, capture_output=True, text=True, timeout=600, cwd=ROOT / "infra")
    text = sam_lines(out)
    report.step("sam build", out.returncode == 0,
                f"{summary(text, 'Build Succeeded')} into {build_dir.relative_to(ROOT)} "
                f"({time.monotonic() - t:.1f} s)"
                + ("" if out.returncode == 0 else "\n" + "\n".join(text[-20:])))
    built = build_dir / "template.yaml"
    return built if out.returncode == 0 and built.is_file() else None


def post_embeddings(box, request):
    """POSTs `request` to a sandbox's Function URL route /v1/embeddings: (HTTP status, the JSON
    body or the error text, milliseconds)."""
    body = json.dumps(request).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{box.api.port}/v1/embeddings", body,
                                 {"Content-Type": "application/json"}, method="POST")
    t = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=box.spec.timeout_s + 5) as resp:
            status, data = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        status, data = err.code, err.read().decode(errors="replace")
    return status, data, (time.monotonic() - t) * 1000


def deployed_parameters(template: dict, captioning_bundle: Path) -> tuple[dict, dict, dict]:
    """The parameters `make deploy` passes (every other one at its default): the captioning
    bundle's pins and version computed from `captioning_bundle`, the CLIP fixture's likewise.
    Also returns both pin lists."""
    import deploy  # tools/deploy.py: the documented digests

    params = parameter_defaults(template)
    digests = deploy.bundle_digests(captioning_bundle)
    params["CaptioningModelSha256"] = deploy.sha256_param(digests)
    params["CaptioningModelVersion"] = deploy.bundle_version(digests)
    clip_pins = deploy.clip_digests(CLIP_FIXTURE)
    params["ClipModelSha256"] = deploy.sha256_param(clip_pins)
    params["ClipModelVersion"] = deploy.bundle_version(clip_pins)
    return params, digests, clip_pins


def fresh_work_dir() -> Path:
    """Points every AWS client here (and tools/deploy.py's) at moto's throwaway credentials, so
    a profile or real keys in the caller's environment never reach it, and empties WORK;
    returns its logs directory."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
    os.environ.update(AWS_ACCESS_KEY_ID="rehearsal", AWS_SECRET_ACCESS_KEY="rehearsal",
                      AWS_REGION=REGION, AWS_DEFAULT_REGION=REGION)
    logs = WORK / "logs"
    if WORK.exists():
        shutil.rmtree(WORK)
    logs.mkdir(parents=True)
    return logs


def rehearse(args, report: Report) -> int:
    if os.geteuid() != 0:
        raise RehearsalError("needs root: a private mount namespace (unshare --mount) and a cgroup")
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        raise RehearsalError("unshare/nsenter (util-linux) are missing")
    host_before = host_state()
    logs = fresh_work_dir()

    # 1. The SAM CLI. The rehearsal then reads the template `sam build` wrote (its CodeUri and
    # ContentUri name what `sam deploy` would upload), or infra/template.yaml without it.
    template_path = TEMPLATE
    if not args.skip_sam:
        template_path = run_sam(report) or TEMPLATE
    log(f"template: {template_path}")

    # 2. The template, resolved.
    import deploy  # tools/deploy.py: the documented digests and publish step
    from package import CODEC_UNAVAILABLE  # tools/package.py: a decoder library that did not load

    template = load_template(template_path)
    params, digests, clip_pins = deployed_parameters(template, CAPTIONING_FIXTURE)
    clip_dims = json.loads((CLIP_FIXTURE / "config.json").read_text())["embed_dim"]
    stack_id = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{STACK}/{uuid.uuid4()}"
    stack = Stack(template, params, stack_id, template_path.parent)

    moto, endpoint = start_moto(logs)
    sandboxes: list[Sandbox] = []
    try:
        s3, sqs = aws_clients(endpoint)
        for note in create_stack(stack, s3, sqs):
            log(f"note: {note}")
            report.notes.append(note)
        specs = function_specs(stack)
        for spec in specs.values():
            for path in [spec.code, *spec.layers]:
                if not path.is_file():
                    raise RehearsalError(f"{spec.logical}: {path} is missing: run `make package`")
        model_bucket = stack.resolve(template["Outputs"]["ModelBucketName"]["Value"])
        model_prefix = f"{params['CaptioningModelPrefix']}/{params['CaptioningModelVersion']}"
        # make deploy's order, twice: a previous bundle (the fixture with one pinned file
        # changed) on a new stack, then the fixture on the stack that serves the previous one.
        previous = WORK / "bundle-previous"
        shutil.copytree(CAPTIONING_FIXTURE, previous)
        with (previous / "generation_config.json").open("a") as f:
            f.write("\n")
        rehearse_publish_then_switch(report, stack, s3, endpoint, deploy, [previous, CAPTIONING_FIXTURE],
                                     CLIP_FIXTURE)
        # Read back from where the template points captioning, not where it was written.
        model_source = specs["CaptioningFunction"].env.get("CAPTIONING_MODEL_SOURCE", "(not set)")
        problems = published_bundle_problems(s3, model_source, digests)
        report.step("publish captioning bundle", not problems,
                    f"{len(digests)} files to s3://{model_bucket}/{model_prefix}/ (tools/deploy.py publish_bundle); "
                    + ("; ".join(problems) if problems else
                       f"all {len(digests)} found at CAPTIONING_MODEL_SOURCE {model_source} with their pinned sha256"))

        # One CLIP bundle for both towers: the query's vector and the photo's must come from one model.
        clip_sources = {logical: (specs[logical].env.get("CLIP_MODEL_SOURCE", "(not set)"),
                                  specs[logical].env.get("CLIP_MODEL_NAME", "(not set)"))
                        for logical in ("EmbeddingsFunction", "PhotoVectorsFunction")}
        clip_source = clip_sources["PhotoVectorsFunction"][0]
        problems = published_bundle_problems(s3, clip_source, clip_pins)
        for logical in clip_sources:
            pinned = specs[logical].env.get("CLIP_MODEL_SHA256", "")
            if pinned != deploy.sha256_param(clip_pins):
                problems.append(f"{logical}'s CLIP_MODEL_SHA256 is not the published bundle's pins: {pinned[:120]}")
        for logical, (source, _) in clip_sources.items():
            where = urllib.parse.urlparse(source)
            denied = [f for f in clip_pins if not put_allowed(
                stack, logical, where.netloc, f"{where.path.strip('/')}/{f}", "s3:GetObject")]
            if denied:
                problems.append(f"{logical}'s Policies allow no s3:GetObject on {', '.join(denied)} under {source}")
        if len(set(clip_sources.values())) != 1:
            problems.append(f"the towers' hosts name different bundles or models: {clip_sources}")
        report.step("publish CLIP bundle", not problems,
                    "; ".join(problems) if problems else
                    f"all {len(clip_pins)} files at CLIP_MODEL_SOURCE {clip_source} (both towers' hosts) "
                    "with their pinned sha256")

        photo_bucket = stack.physical["PhotoBucket"]
        results_bucket = stack.physical["ResultsBucket"]
        photo_key = DOCUMENTED_UPLOAD_PREFIX + PHOTO.name
        s3.put_object(Bucket=photo_bucket, Key=photo_key, Body=PHOTO.read_bytes())
        meta = head(s3, photo_bucket, photo_key)
        log(f"uploaded s3://{photo_bucket}/{photo_key} ({meta['ContentLength']} bytes)")
        phone_key = DOCUMENTED_UPLOAD_PREFIX + PHONE_PHOTO.name
        s3.put_object(Bucket=photo_bucket, Key=phone_key, Body=PHONE_PHOTO.read_bytes())
        phone_meta = head(s3, photo_bucket, phone_key)

        # One /opt per set of layers: embeddings' (ONNX Runtime), faces' and captioning's (ONNX
        # Runtime and the image codecs), each unpacked once.
        layer_zips = {tuple(s.layers) for s in specs.values()}
        layer_dirs = {}
        for layers in layer_zips:
            d = WORK / "sandboxes" / ("opt-" + hashlib.sha256(repr(layers).encode()).hexdigest()[:8])
            d.mkdir(parents=True)
            for z in layers:  # later layers overwrite earlier ones, as Lambda merges them
                with zipfile.ZipFile(z) as zf:
                    zf.extractall(d)
            layer_dirs[layers] = d

        def boot(logical: str) -> Sandbox:
            spec = specs[logical]
            box = start_sandbox(spec, endpoint, logs, layer_dirs[tuple(spec.layers)])
            sandboxes.append(box)
            init_s = box.wait_ready()
            report.cold.append({"function": logical, "memory_mb": spec.memory_mb,
                                "limit": box.cgroup.description, "ready_ms": init_s * 1000,
                                "record": box.cold_start() or {}})
            # wait_ready stopped the rehearsal if this took longer than INIT_LIMIT_S.
            log(f"{logical}: ready (first /next) {init_s * 1000:.0f} ms after spawn; {box.cgroup.description}")
            return box

        def cold_start_step(box: Sandbox, cold: dict) -> None:
            # A model loaded behind the first event (captioning) logs its record then, not at
            # init: it is read again once the sandbox has served.
            rec = cold["record"] or box.cold_start() or {}
            cold["record"] = rec
            phases = ", ".join(f"{k[:-3]} {rec[k]:.0f}" for k in
                               ("library_load_ms", "model_fetch_ms", "session_build_ms", "warmup_ms")
                               if isinstance(rec.get(k), (int, float)))
            report.step(f"{box.spec.logical} cold start", bool(rec),
                        f"spawn to ready {cold['ready_ms']:.0f} ms; cold start record total "
                        f"{rec.get('total_ms', float('nan')):.0f} ms ({phases}); {box.cgroup.description}")

        def finish(box: Sandbox):
            cold = next(c for c in report.cold if c["function"] == box.spec.logical)
            cold_start_step(box, cold)
            box.stop()
            cold["peak_rss_mb"] = box.peak_rss_mb
            cold["cgroup_peak_mb"] = box.cgroup_peak_mb
            cold["tmp_used"] = box.tmp_used
            cache = box.spec.env.get("COLDPATH_OPTIMIZED_MODEL_DIR")
            if "COLDPATH_PREPARED_MODEL_DIR" in box.spec.env and cache:
                # A packaged function finds every graph of the models in its zip in /var/task:
                # none of them optimised into its /tmp cache. (ONNX Runtime 1.31 itself writes a
                # 51-byte /tmp/.ses.) A model fetched at init (embeddings' CLIP text tower) is
                # optimised there, as the storage the template gives it allows for.
                with zipfile.ZipFile(box.spec.code) as zf:
                    prepared = {n.split("/", 1)[1].rsplit("-", 1)[0] for n in zf.namelist()
                                if n.startswith("graphs/") and n.endswith(".onnx")}
                optimised = [f for f in box.tmp_files if f.startswith(cache.rstrip("/") + "/")
                             and any(Path(f).name.startswith(m + "-") for m in prepared)]
                report.step(f"{box.spec.logical} loads its prepared graphs", not optimised,
                            f"graphs optimised into {cache}: {optimised or 'none'}; "
                            f"/tmp holds {box.tmp_files or 'nothing'}")
            if "COLDPATH_LIBHEIF_PATH" in box.spec.env or "COLDPATH_LIBAVIF_PATH" in box.spec.env:
                # A decoder library that does not load is a warning at init, not a failure: the
                # function would refuse that format only. Both must load from the layer.
                records = [json.loads(line) for line in box.log_path.read_text(errors="replace").splitlines()
                           if line.startswith("{") and "image decoder" in line]
                unloaded = [f"{r.get('format')}: {r.get('reason')}" for r in records
                            if r.get("message", "").startswith(CODEC_UNAVAILABLE)]
                loaded = [f"{r.get('format')}: {r.get('decoder')}" for r in records
                          if r.get("message") == "image decoder loaded"]
                report.step(f"{box.spec.logical} loads the HEIC and AVIF decoders from its layers",
                            not unloaded and len(loaded) == 2,
                            ("unavailable: " + "; ".join(unloaded)) if unloaded
                            else "; ".join(loaded) or "no decoder logged at init")
            log(f"{box.spec.logical}: peak RSS {box.peak_rss_mb or float('nan'):.1f} MiB, cgroup peak "
                f"{cold['cgroup_peak_mb'] or float('nan'):.1f} MiB of {box.spec.memory_mb}, /tmp used {box.tmp_used}")

        # 3. embeddings: a Function URL request.
        box = boot("EmbeddingsFunction")
        try:
            status, data, ms = post_embeddings(box, {"model": "all-MiniLM-L6-v2",
                                                     "input": ["beach at sunset", "a cat asleep on a sofa"]})
            ok = status == 200 and isinstance(data, dict) and len(data.get("data", [])) == 2
            detail = f"HTTP {status} in {ms:.0f} ms"
            if ok:
                vecs = [d["embedding"] for d in data["data"]]
                norms = [sum(x * x for x in v) ** 0.5 for v in vecs]
                cos = sum(a * b for a, b in zip(*vecs)) / (norms[0] * norms[1])
                ok = all(len(v) == 384 for v in vecs) and all(abs(n - 1) < 1e-3 for n in norms)
                detail += (f", {len(vecs)} vectors of {len(vecs[0])} dims, norms "
                           f"{', '.join(f'{n:.4f}' for n in norms)}, cosine {cos:.3f}, "
                           f"usage {data.get('usage')}")
            else:
                detail += f": {str(data)[:500]}\n{box.tail()}"
            report.step("embeddings Function URL POST /v1/embeddings", ok, detail)

            # Photo search by words: the same URL, the CLIP model named, the text tower answers.
            clip_model = box.spec.env.get("CLIP_MODEL_NAME", "(CLIP_MODEL_NAME not set)")
            status, data, ms = post_embeddings(box, {"model": clip_model, "input": ["a dog on the beach"]})
            ok = status == 200 and isinstance(data, dict) and len(data.get("data", [])) == 1
            detail = f"EMBEDDINGS_CLIP={box.spec.env.get('EMBEDDINGS_CLIP')}, model {clip_model}: HTTP {status} in {ms:.0f} ms"
            if ok:
                vec = data["data"][0]["embedding"]
                norm = sum(x * x for x in vec) ** 0.5
                ok = len(vec) == clip_dims and abs(norm - 1) < 1e-3 and data.get("model") == clip_model
                detail += (f", 1 vector of {len(vec)} dims (the bundle's embed_dim {clip_dims}), norm "
                           f"{norm:.4f}, model {data.get('model')}")
            else:
                detail += f": {str(data)[:500]}\n{box.tail()}"
            report.step("embeddings Function URL POST /v1/embeddings, CLIP text tower", ok, detail)
        finally:
            finish(box)

        # 4. faces: the upload's S3 notification.
        faces_spec = specs["FacesFunction"]
        s3_events = [e for e in faces_spec.events.values() if e["Type"] == "S3"]
        routed = s3_routes(faces_spec.events, photo_bucket, photo_key)
        outside = s3_routes(faces_spec.events, photo_bucket, OUTSIDE_UPLOAD_KEY)
        report.step("S3 notification routes the upload to faces", len(routed) == 1 and not outside,
                    f"{len(routed)} of {len(s3_events)} S3 events match the documented upload "
                    f"s3://{photo_bucket}/{photo_key} (want 1), {len(outside)} match "
                    f"s3://{photo_bucket}/{OUTSIDE_UPLOAD_KEY} (want 0)")
        box = boot("FacesFunction")
        try:
            # The photo, then an iPhone's HEIC upload (decoded by the image-codecs layer's libheif).
            uploads = [
                ("faces: photo upload -> result in the results bucket", photo_key, meta, PHOTO_FACES),
                (f"faces: an iPhone upload ({PHONE_PHOTO.name}) -> result in the results bucket",
                 phone_key, phone_meta, PHONE_PHOTO_FACES),
            ]
            for step_name, key, key_meta, want_faces in uploads:
                t = time.monotonic()
                inv = box.api.invoke(json.dumps(s3_notification(photo_bucket, key, key_meta)).encode())
                ms = (time.monotonic() - t) * 1000
                expected = result_key(faces_spec.env["COLDPATH_RESULT_SINK"], "faces", photo_bucket, key)
                keys = [k for k in list_results(s3, results_bucket, expected) if k == expected]
                detail = f"invoke {'ok' if inv.ok else 'FAILED ' + inv.error_type} in {ms:.0f} ms"
                ok = inv.ok and bool(keys)
                if ok:
                    result = json.loads(s3.get_object(Bucket=results_bucket, Key=keys[0])["Body"].read())
                    faces = find_key(result, "faces") or []
                    ok = len(faces) == want_faces
                    scores = ", ".join(f"{f.get('score', 0):.2f}" for f in faces)
                    detail += (f"; s3://{results_bucket}/{keys[0]}: {len(faces)} faces (expected "
                               f"{want_faces}), scores {scores}")
                else:
                    detail += f"; results under {faces_spec.env['COLDPATH_RESULT_SINK']}: {keys}; response {inv.body[:300]!r}\n{box.tail()}"
                report.step(step_name, ok, detail)
        finally:
            finish(box)

        # 4b. clip: the upload's EventBridge Object Created event, invoked asynchronously.
        clip_spec = specs["PhotoVectorsFunction"]
        clip_event = eventbridge_object_created(photo_bucket, photo_key, meta)
        routed = eventbridge_function_routes(stack, clip_spec.arn, clip_event)
        stray = eventbridge_function_routes(
            stack, clip_spec.arn, eventbridge_object_created(photo_bucket, OUTSIDE_UPLOAD_KEY, meta))
        report.step("EventBridge rule routes the upload to the clip function",
                    len(routed) == 1 and not stray,
                    f"{', '.join(routed) or 'no rule (targeting it, matching, with a Lambda permission for it)'} "
                    f"invokes {clip_spec.name} for the documented upload (want one rule); "
                    f"{', '.join(stray) or 'none'} for {OUTSIDE_UPLOAD_KEY} (want none)")
        box = boot("PhotoVectorsFunction")
        try:
            uploads = [("clip: photo upload -> its vector in the results bucket", photo_key, meta),
                       (f"clip: an iPhone upload ({PHONE_PHOTO.name}) -> its vector in the results bucket",
                        phone_key, phone_meta)]
            for step_name, key, key_meta in uploads:
                event = eventbridge_object_created(photo_bucket, key, key_meta)
                if not routed:
                    report.step(step_name, False, "not delivered: no rule would invoke the function")
                    continue
                t = time.monotonic()
                inv = box.api.invoke(json.dumps(event).encode())
                ms = (time.monotonic() - t) * 1000
                expected = result_key(clip_spec.env["COLDPATH_RESULT_SINK"], "clip", photo_bucket, key)
                keys = [k for k in list_results(s3, results_bucket, expected) if k == expected]
                detail = f"invoke {'ok' if inv.ok else 'FAILED ' + inv.error_type} in {ms:.0f} ms"
                ok = inv.ok and bool(keys)
                allowed = put_allowed(stack, "PhotoVectorsFunction", results_bucket, expected)
                if ok and not allowed:
                    ok = False
                    detail += (f"; s3://{results_bucket}/{expected} was written, but the function's "
                               "Policies allow no s3:PutObject there: Lambda would be refused")
                elif ok:
                    doc = json.loads(s3.get_object(Bucket=results_bucket, Key=keys[0])["Body"].read())
                    vector = find_key(doc, "vector") or []
                    norm = sum(x * x for x in vector) ** 0.5
                    model = find_key(doc, "model")
                    ok = (len(vector) == clip_dims and abs(norm - 1) < 1e-3
                          and model == clip_spec.env.get("CLIP_MODEL_NAME"))
                    detail += (f"; s3://{results_bucket}/{keys[0]}: a vector of {len(vector)} dims (the "
                               f"bundle's embed_dim {clip_dims}), norm {norm:.4f}, model {model}, "
                               f"{find_key(doc, 'width')}x{find_key(doc, 'height')}")
                elif not keys:
                    detail += f"; results under {clip_spec.env['COLDPATH_RESULT_SINK']}: {keys}; response {inv.body[:300]!r}\n{box.tail()}"
                report.step(step_name, ok, detail)
        finally:
            finish(box)

        # 5. captioning: the upload's EventBridge event as a caption message, and a poison one.
        cap_spec = specs["CaptioningFunction"]
        sqs_events = [e["Properties"] for e in cap_spec.events.values() if e["Type"] == "SQS"]
        if len(sqs_events) != 1:
            raise RehearsalError(f"CaptioningFunction: {len(sqs_events)} SQS events, expected 1")
        mapping = sqs_events[0]
        queue_arn = mapping["Queue"]
        queue_logical = next(q for q in stack.of_type("AWS::SQS::Queue")
                             if stack.attributes[(q, "Arn")] == queue_arn)
        queue_url = stack.physical[queue_logical]
        redrive = stack.resolve(stack.resources[queue_logical]["Properties"]["RedrivePolicy"])
        max_receive = int(redrive["maxReceiveCount"])
        dlq_logical = next(q for q in stack.of_type("AWS::SQS::Queue")
                           if stack.attributes[(q, "Arn")] == redrive["deadLetterTargetArn"])
        dlq_url = stack.physical[dlq_logical]
        batch_size = int(mapping.get("BatchSize", 10))
        partial = "ReportBatchItemFailures" in mapping.get("FunctionResponseTypes", [])

        bridge = eventbridge_object_created(photo_bucket, photo_key, meta)
        matched = eventbridge_routes(stack, queue_arn, bridge)
        stray = eventbridge_routes(stack, queue_arn,
                                   eventbridge_object_created(photo_bucket, OUTSIDE_UPLOAD_KEY, meta))
        report.step("EventBridge rule routes the upload to the caption queue",
                    len(matched) == 1 and not stray,
                    f"{', '.join(matched) or 'no rule'} matches the documented upload's Object Created event "
                    f"(want one rule); {', '.join(stray) or 'none'} matches {OUTSIDE_UPLOAD_KEY}'s (want none)")
        good_id = sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(bridge))["MessageId"]
        poison_body = '{"id": "poison", "image": '  # truncated JSON: fails on every receive
        poison_id = sqs.send_message(QueueUrl=queue_url, MessageBody=poison_body)["MessageId"]
        log(f"sent caption message {good_id} and poison message {poison_id} to {queue_logical}")

        # The bulk pool's controller on a day without GPU quota, with these messages waiting.
        consumer_state = rehearse_pool(report, stack, cap_spec, endpoint, queue_arn, queue_url, sqs)

        box = boot("CaptioningFunction")
        try:
            receives: dict[str, int] = {}
            invocations = []
            captioned = False
            poisoned = False
            deadline = time.monotonic() + 60 + max_receive * (REHEARSAL_VISIBILITY + cap_spec.timeout_s)
            cap_prefix = result_key(cap_spec.env["COLDPATH_RESULT_SINK"], "captioning", photo_bucket, photo_key)
            # The script plays the event source mapping: a disabled one consumes nothing.
            if consumer_state != "Enabled":
                deadline = time.monotonic()
            while time.monotonic() < deadline and not (captioned and poisoned):
                got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=batch_size,
                                          WaitTimeSeconds=1, AttributeNames=["All"],
                                          MessageAttributeNames=["All"]).get("Messages", [])
                if got:
                    for m in got:
                        receives[m["MessageId"]] = int(m["Attributes"]["ApproximateReceiveCount"])
                    t = time.monotonic()
                    inv = box.api.invoke(json.dumps(sqs_event(got, queue_arn)).encode())
                    ms = (time.monotonic() - t) * 1000
                    failed = set()
                    if not inv.ok:
                        failed = {m["MessageId"] for m in got}  # a failed invocation deletes nothing
                    elif partial:
                        answer = json.loads(inv.body or b"{}") or {}
                        failed = {f["itemIdentifier"] for f in answer.get("batchItemFailures", [])}
                    for m in got:
                        if m["MessageId"] not in failed:
                            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
                    invocations.append(f"{len(got)} record(s), {len(failed)} failed, {ms:.0f} ms"
                                       + ("" if inv.ok else f" ({inv.error_type})"))
                    log(f"captioning invoke: {invocations[-1]}")
                captioned = captioned or bool(list_results(s3, results_bucket, cap_prefix))
                dlq = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=0,
                                          WaitTimeSeconds=0).get("Messages", [])
                poisoned = any(m["MessageId"] == poison_id for m in dlq)
            keys = list_results(s3, results_bucket, cap_prefix)
            detail = f"{len(invocations)} invocations ({'; '.join(invocations)})"
            if keys:
                result = json.loads(s3.get_object(Bucket=results_bucket, Key=keys[0])["Body"].read())
                caption = find_key(result, "caption") or result
                detail += f"; s3://{results_bucket}/{keys[0]}: {json.dumps(caption)[:200]}"
            ok = len(keys) == 1 and good_id not in {m["MessageId"] for m in dlq}
            report.step("captioning: caption message -> caption in the results bucket", ok,
                        detail + ("" if ok else f"\n{box.tail()}"))
            report.step(f"captioning: poison message -> {dlq_logical} after maxReceiveCount {max_receive}",
                        poisoned and receives.get(poison_id) == max_receive,
                        f"received {receives.get(poison_id, 0)} times, then moved to the DLQ: "
                        f"{'yes' if poisoned else 'no'}")
            visible = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
            left = int(visible["ApproximateNumberOfMessages"]) + int(visible["ApproximateNumberOfMessagesNotVisible"])
            report.step("caption queue drained", left == 0, f"{left} messages left")
        finally:
            finish(box)
    finally:
        for box in sandboxes:
            if box.proc.poll() is None:
                box.stop()
        moto.terminate()
        moto.wait()
    # The sandboxes mounted /var, /var/task, /opt and /tmp in their own namespaces; the host's
    # mount table and /var/task must be as they were before the first one.
    changes = host_changes(host_before, host_state())
    report.step("host untouched", not changes,
                "; ".join(changes) if changes else
                f"no sandbox mount in the host's mount table ({len(host_before['mounts'])} mounts before), /var/task as before")

    if not args.keep:
        shutil.rmtree(WORK / "sandboxes", ignore_errors=True)


# The real-size rehearsal's batch: a phone's 12 MP photo as an iPhone stores it (HEIC, a grid of
# 512-px tiles; shared/image/fixtures/gen_heif_avif.py --bench-out writes it) and the sample
# photos users bring, one SQS batch of them.
REAL_SIZE_HEIC = ROOT / "target" / "bench" / "heif" / "group8-4000-grid512.heic"
REAL_SIZE_PHOTOS = [REAL_SIZE_HEIC] + [ROOT / "events" / "data" / "photos" / n for n in (
    "IMG_0001.HEIC", "friends.avif", "group.jpg", "group-exif6.jpg", "family photo.jpg",
    "astronaut.jpg", "cat.jpg")]
REAL_SIZE_OUT = ROOT / "target" / "bench" / "captioning-lambda-real-size.json"


def human_mib(size: str) -> float | None:
    """MiB from `du -h`'s size ("1.1G", "512K", "0"); None if unreadable."""
    m = re.fullmatch(r"([0-9.]+)([KMGT]?)", size.strip())
    if not m:
        return None
    return float(m.group(1)) * {"": 1 / 2**20, "K": 1 / 1024, "M": 1, "G": 1024, "T": 2**20}[m.group(2)]


def rehearse_real_size(args, report: Report) -> dict:
    """The captioning function as deployed, with the real-size model: the packaged zip and its
    layers in the Lambda-shaped sandbox (MemorySize as its memory cap and CPU share,
    EphemeralStorage as /tmp, the template's environment), the model published to moto's S3 the
    way `make deploy` publishes it and fetched by the function from there into an empty /tmp,
    Lambda's 10 s init limit, then one SQS batch of real photos and a second, warm one. Returns
    the figures (also written to REAL_SIZE_OUT, which `coldpath plan` reads)."""
    if os.geteuid() != 0:
        raise RehearsalError("needs root: a private mount namespace (unshare --mount) and a cgroup")
    model_dir = args.real_size
    missing = [p for p in REAL_SIZE_PHOTOS if not p.is_file()]
    if missing:
        raise RehearsalError(f"missing photos: {', '.join(map(str, missing))} (make rehearse-real-size writes them)")
    logs = fresh_work_dir()
    import deploy

    template = load_template(TEMPLATE)
    params, digests, _ = deployed_parameters(template, model_dir)
    stack_id = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{STACK}/{uuid.uuid4()}"
    stack = Stack(template, params, stack_id, TEMPLATE.parent)
    moto, endpoint = start_moto(logs)
    box = None
    try:
        s3, sqs = aws_clients(endpoint)
        create_stack(stack, s3, sqs)
        spec = function_specs(stack)["CaptioningFunction"]
        for path in [spec.code, *spec.layers]:
            if not path.is_file():
                raise RehearsalError(f"{path} is missing: run `make package`")
        model_bucket = stack.resolve(template["Outputs"]["ModelBucketName"]["Value"])
        prefix = f"{params['CaptioningModelPrefix']}/{params['CaptioningModelVersion']}"
        t = time.monotonic()
        deploy.publish_bundle(model_dir, digests, model_bucket, prefix, REGION, endpoint)
        size_mb = sum((model_dir / f).stat().st_size for f in digests) / 1e6
        problems = published_bundle_problems(s3, spec.env.get("CAPTIONING_MODEL_SOURCE", ""), digests)
        report.step("publish the real-size bundle", not problems,
                    "; ".join(problems) or f"{len(digests)} files, {size_mb:.0f} MB, in "
                    f"{time.monotonic() - t:.0f} s to s3://{model_bucket}/{prefix}/")

        photo_bucket = stack.physical["PhotoBucket"]
        results_bucket = stack.physical["ResultsBucket"]
        mapping = next(e["Properties"] for e in spec.events.values() if e["Type"] == "SQS")
        queue_arn = mapping["Queue"]
        queue_url = stack.physical[next(q for q in stack.of_type("AWS::SQS::Queue")
                                        if stack.attributes[(q, "Arn")] == queue_arn)]
        batch_size = int(stack.resolve(mapping.get("BatchSize", 10)))

        def batch(round_name: str) -> list[dict]:
            """Uploads the photos under their own keys and receives their caption messages as
            the event source mapping would: one batch of up to BatchSize."""
            for photo in REAL_SIZE_PHOTOS[:batch_size]:
                key = f"{DOCUMENTED_UPLOAD_PREFIX}{round_name}/{photo.name}"
                s3.put_object(Bucket=photo_bucket, Key=key, Body=photo.read_bytes())
                sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(
                    eventbridge_object_created(photo_bucket, key, head(s3, photo_bucket, key))))
            got: list[dict] = []
            while len(got) < min(batch_size, len(REAL_SIZE_PHOTOS)):
                more = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=batch_size - len(got),
                                           WaitTimeSeconds=1, AttributeNames=["All"],
                                           MessageAttributeNames=["All"]).get("Messages", [])
                if not more:
                    raise RehearsalError("the caption messages did not arrive")
                got += more
            return got

        def invoke(messages: list[dict], round_name: str) -> tuple[float, list[str]]:
            """Seconds the invocation took and what went wrong (empty: every photo captioned,
            every message deleted)."""
            t = time.monotonic()
            inv = box.api.invoke(json.dumps(sqs_event(messages, queue_arn)).encode())
            took = time.monotonic() - t
            problems = []
            if not inv.ok:
                problems.append(f"the invocation failed ({inv.error_type}): {box.tail()}")
            else:
                failed = (json.loads(inv.body or b"{}") or {}).get("batchItemFailures", [])
                if failed:
                    problems.append(f"{len(failed)} of {len(messages)} messages failed: {box.tail()}")
                for m in messages:
                    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
            for photo in REAL_SIZE_PHOTOS[:batch_size]:
                key = f"{DOCUMENTED_UPLOAD_PREFIX}{round_name}/{photo.name}"
                prefix = result_key(spec.env["COLDPATH_RESULT_SINK"], "captioning", photo_bucket, key)
                if not list_results(s3, results_bucket, prefix):
                    problems.append(f"no caption for {key}")
            return took, problems

        cold_messages = batch("cold")
        layer_dir = WORK / "sandboxes" / "opt"
        layer_dir.mkdir(parents=True)
        for z in spec.layers:
            with zipfile.ZipFile(z) as zf:
                zf.extractall(layer_dir)
        # The model fills a gigabyte of the tmpfs /tmp, which the cgroup is charged for: its
        # limit is MemorySize plus EphemeralStorage, and MemorySize is held against the
        # process's own peak (VmHWM) below. moto answers each range of an object by reading the
        # whole object, so here the model is fetched in one GET per file (noted).
        box = start_sandbox(spec, endpoint, logs, layer_dir, tmp_in_memory_limit=True,
                            extra_env={"COLDPATH_S3_RANGE_MIB": "0"})
        report.notes.append("COLDPATH_S3_RANGE_MIB=0 (one GET per model file): moto reads a whole "
                            "object to answer each range of it")
        init_s = box.wait_ready()  # stops the rehearsal past INIT_LIMIT_S
        cold_s, cold_problems = invoke(cold_messages, "cold")
        first_s = time.monotonic() - box.started
        report.step(f"cold batch of {len(cold_messages)} real photos captioned", not cold_problems,
                    "; ".join(cold_problems) or f"init {init_s:.1f} s (limit {INIT_LIMIT_S} s), "
                    f"first response {first_s:.1f} s after spawn (the invocation {cold_s:.1f} s)")
        warm_s, warm_problems = invoke(batch("warm"), "warm")
        report.step("warm batch captioned", not warm_problems,
                    "; ".join(warm_problems) or f"{warm_s:.1f} s, {warm_s / batch_size * 1000:.0f} ms a photo")
        rec = box.cold_start() or {}
        box.stop()
        peak = box.cgroup_peak_mb
        rss = box.peak_rss_mb
        report.step(f"peak memory within MemorySize {spec.memory_mb} MB", rss is not None and rss < spec.memory_mb,
                    f"process VmHWM {rss} MiB; cgroup peak {peak} MiB with /tmp ({box.cgroup.description})")
        tmp_files = list(box.tmp_files)
        tmp_mib = human_mib(box.tmp_used)
        report.step(f"/tmp within EphemeralStorage {spec.storage_mb} MB",
                    tmp_mib is not None and tmp_mib < spec.storage_mb,
                    f"/tmp used {box.tmp_used or '(unknown)'}: {', '.join(tmp_files) or 'nothing'}")
        figures = {
            "machine": {"cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                                     if l.startswith("model name")), ""),
                        "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
            "model": {"dir": str(model_dir), "mb": round(size_mb), "files": sorted(digests)},
            "function": {"memory_mb": spec.memory_mb, "storage_mb": spec.storage_mb,
                         "timeout_s": spec.timeout_s, "batch_size": batch_size,
                         "limits": box.cgroup.description},
            "photos": [p.name for p in REAL_SIZE_PHOTOS[:batch_size]],
            "init_ms": round(init_s * 1000),
            "init_limit_ms": INIT_LIMIT_S * 1000,
            "first_response_ms": round(first_s * 1000),
            "cold_invocation_ms": round(cold_s * 1000),
            "warm_batch_ms": round(warm_s * 1000),
            "warm_ms_per_photo": round(warm_s / batch_size * 1000),
            "cold_start_record": {k: v for k, v in rec.items() if k.endswith("_ms") or k == "provider"},
            # The plan's cold start (measurements.toml): the sandbox's own load (library, fetch
            # from S3, sessions, warm-up) and one photo's caption, as a fresh sandbox starts.
            "cold_start_ms": round(rec.get("total_ms", float("nan")) + warm_s / batch_size * 1000),
            "peak_rss_mib": box.peak_rss_mb,
            "cgroup_peak_mib": peak,
            "tmp_used": box.tmp_used,
            "tmp_files": tmp_files,
        }
        REAL_SIZE_OUT.parent.mkdir(parents=True, exist_ok=True)
        REAL_SIZE_OUT.write_text(json.dumps(figures, indent=2) + "\n")
        return figures
    finally:
        if box is not None and box.proc.poll() is None:
            box.stop()
        moto.terminate()
        moto.wait()
        if not args.keep:
            shutil.rmtree(WORK / "sandboxes", ignore_errors=True)


def print_summary(report: Report, total_s: float) -> None:
    print(f"\n== cold starts from an empty /tmp ({platform.node()}, {os.cpu_count()} CPUs)")
    print(f"{'function':<20} {'memory':>7} {'spawn->ready':>13} {'record total':>13} "
          f"{'peak RSS':>10} {'cgroup peak':>12} {'/tmp':>6}")
    for c in report.cold:
        rec = c["record"]
        rss = c.get("peak_rss_mb")
        cg = c.get("cgroup_peak_mb")
        print(f"{c['function']:<20} {c['memory_mb']:>5} MB {c['ready_ms']:>10.0f} ms "
              f"{rec.get('total_ms', float('nan')):>10.0f} ms "
              f"{(rss if rss is not None else float('nan')):>6.1f} MiB {(cg if cg is not None else float('nan')):>8.1f} MiB "
              f"{c.get('tmp_used', ''):>6}")
    print("\n== rehearsal-only differences from AWS")
    for note in report.notes:
        print(f"- {note}")
    print("\n== steps")
    for name, ok, detail in report.steps:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail.splitlines()[0] if detail else ''}")
    verdict = "rehearsal passed" if report.ok else "rehearsal FAILED"
    print(f"\n{verdict} in {total_s:.0f} s (logs: {(WORK / 'logs').relative_to(ROOT)})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-sam", action="store_true", help="skip sam validate and sam build")
    parser.add_argument("--keep", action="store_true", help="keep the unpacked sandboxes")
    parser.add_argument("--real-size", type=Path, metavar="MODEL_DIR",
                        help="only captioning, with this (hoisted) real-size bundle: init, first "
                             "caption and peak memory as JSON (make rehearse-real-size)")
    args = parser.parse_args(argv)
    report = Report()
    started = time.monotonic()
    try:
        if args.real_size:
            figures = rehearse_real_size(args, report)
            print(json.dumps(figures, indent=2))
        else:
            rehearse(args, report)
    except RehearsalError as err:
        report.step("rehearsal stopped", False, str(err))
    except ImportError as err:
        log(f"rehearse: {err}: run with .venv-deploy/bin/python (make setup-deploy)")
        return 2
    print_summary(report, time.monotonic() - started)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
