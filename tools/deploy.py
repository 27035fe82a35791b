#!/usr/bin/env python3
"""Deploy coldpath to an AWS account: the one documented flow (`make deploy`).

    python3 tools/deploy.py --captioning-model DIR [--clip-model DIR] [--stack-name NAME] [--region REGION]
                            [--parameter KEY=VALUE]... [--skip-package] [--dry-run]
                            [--allow-random-weights]

In order:
1. The captioning bundle's digests (and the CLIP bundle's, --clip-model: Immich's layout, one
   bundle for both towers), computed here from DIR (the files the captioning function
   pins for a hoisted merged decoder: functions/engines/captioning/src/model/config.rs), so nobody types
   a digest, and its version: the sha256 of those digests. A bundle this repository generates
   with random weights (the committed test fixtures, `make bench-captioning-real`'s
   `.cache/models/vit-gpt2-random*`, the CLIP fixtures and `make bench-clip-models`' output) is
   refused unless --allow-random-weights (`ALLOW_RANDOM_WEIGHTS=1 make deploy`): it captions
   nonsense, and its vectors match no word to any photo.
2. `sam validate --lint` on infra/template.yaml.
3. `make package`'s build (tools/package.py) unless --skip-package: the function zips, with the
   embeddings and faces models and their prepared graphs inside, and the ONNX Runtime and
   image-codecs layers, size-checked. These exact files are what `sam deploy` uploads (CodeUri points at them).
4. Publish, then switch (publish_then_switch). The bundle is uploaded to the stack's model
   bucket under <CaptioningModelPrefix>/<version>/ (a key named by the content, so nothing in
   service is overwritten), each object with its SHA-256 checksum so S3 refuses a corrupted
   upload; only then does `sam deploy --config-file infra/samconfig.toml` point the stack at it
   (CaptioningModelVersion and CaptioningModelSha256, ClipModelVersion and ClipModelSha256 when
   a CLIP bundle is given, and any --parameter). The CLIP bundle goes under
   <ClipModelPrefix>/<version>/ the same way; both the embeddings function (the text tower) and
   the clip function (the vision tower) read it, so a query's vector and a photo's come from one
   model. A deploy without --clip-model names no CLIP bundle: embeddings serves MiniLM alone and
   the clip function refuses to start. Until that deploy
   completes, captioning's cold starts read the previous version, which stays where it was
   (delete old versions by hand once the new one is live). The GPU pool (infra/gpu/batch.yaml)
   reads the pin from the captioning function at each submission, so it follows. On a first
   deploy the stack, and so the bucket, does not exist yet: the stack is deployed once with no
   bundle named (captioning refuses to start, a Config error, and nothing has been uploaded to
   caption), then the bundle is published and the stack switched to it.

--dry-run prints every command and the digests and runs nothing that touches AWS.
The toolchain (the SAM CLI, boto3, cargo-lambda) is in .venv-deploy (`make setup-deploy`).
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The SAM CLI sends usage telemetry unless told not to; deploying should talk to AWS only.
os.environ.setdefault("SAM_CLI_TELEMETRY", "0")
VENV_BIN = ROOT / ".venv-deploy" / "bin"
TEMPLATE = ROOT / "infra" / "template.yaml"
SAMCONFIG = ROOT / "infra" / "samconfig.toml"

# The files the captioning function fetches and pins for the deployed layout (merged decoder,
# KV cache, cross-attention hoisted by tools/hoist_cross_attention.py; CAPTIONING_CROSS_GRAPH is
# true in the template). config.json is not read at run time, so it is neither pinned nor sent.
CAPTIONING_FILES = (
    "encoder_model.onnx",
    "decoder_model_merged.onnx",
    "decoder_cross_model.onnx",
    "tokenizer.json",
    "preprocessor_config.json",
    "generation_config.json",
)


# The files of a CLIP bundle in Immich's layout, all pinned by one CLIP_MODEL_SHA256 (each host
# checks the files its towers need: functions/engines/clip/src/layout.rs, MODEL_FILES).
CLIP_FILES = (
    "config.json",
    "visual/model.onnx",
    "visual/preprocess_cfg.json",
    "textual/model.onnx",
    "textual/tokenizer.json",
    "textual/tokenizer_config.json",
)

# The random-weight bundles this repository generates: never a model to serve.
RANDOM_WEIGHT_BUNDLES = (
    ROOT / "tests" / "fixtures",
    ROOT / ".cache" / "models" / "vit-gpt2-random",
    ROOT / ".cache" / "models" / "vit-gpt2-random-hoisted",
    ROOT / "target" / "bench" / "clip-models",
)


class DeployError(Exception):
    """A step failed; the message says which and why."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundle_digests(model_dir: Path) -> dict[str, str]:
    """file -> sha256 hex for every file captioning pins; a missing file is an error."""
    missing = [f for f in CAPTIONING_FILES if not (model_dir / f).is_file()]
    if missing:
        raise DeployError(
            f"{model_dir} is not a hoisted captioning bundle: missing {', '.join(missing)} "
            "(export with optimum, then run tools/hoist_cross_attention.py; "
            "functions/engines/captioning/MODEL.md)"
        )
    return {f: sha256_file(model_dir / f) for f in CAPTIONING_FILES}


def clip_digests(model_dir: Path) -> dict[str, str]:
    """file -> sha256 hex for every file of a CLIP bundle (CLIP_MODEL_SHA256); a missing file
    is an error."""
    missing = [f for f in CLIP_FILES if not (model_dir / f).is_file()]
    if missing:
        raise DeployError(
            f"{model_dir} is not a CLIP bundle in Immich's layout: missing {', '.join(missing)} "
            "(functions/engines/clip/README.md)"
        )
    return {f: sha256_file(model_dir / f) for f in CLIP_FILES}


def sha256_param(digests: dict[str, str]) -> str:
    """The CAPTIONING_MODEL_SHA256 value: file=hex, comma-separated."""
    return ",".join(f"{name}={hex_}" for name, hex_ in digests.items())


def bundle_version(digests: dict[str, str]) -> str:
    """The bundle's folder name: the sha256 of its CaptioningModelSha256 text, so two bundles
    share a folder only if every pinned file is the same."""
    return hashlib.sha256(sha256_param(digests).encode()).hexdigest()


def random_weights(model_dir: Path) -> str | None:
    """Why `model_dir` is a random-weight bundle this repository generated, or None."""
    where = model_dir.resolve()
    for bundle in RANDOM_WEIGHT_BUNDLES:
        if where == bundle.resolve() or bundle.resolve() in where.parents:
            return f"{model_dir} is {bundle.relative_to(ROOT)}, generated with random weights"
    return None


def publish_then_switch(digests: dict[str, str], outputs_of, sam_deploy, publish,
                        clip=None) -> dict[str, str]:
    """Uploads the bundle under a content-named prefix, and only then deploys the stack with it.

    `outputs_of()` returns the stack's outputs (None when there is no stack), `sam_deploy(pin)`
    deploys with the model parameters `pin` (a list of KEY=VALUE, empty for none), and
    `publish(bucket, prefix)` uploads the bundle; the rehearsal calls this with its own three.
    `clip`, when given, is a CLIP bundle's `(digests, publish)`: published under ClipModelPrefix
    the same way, before the same switch. Returns the outputs after the switch."""
    outputs = outputs_of()
    if not outputs or not outputs.get("ModelBucketName"):
        print("no stack (or no model bucket) yet: deploying once with no model bundle named",
              file=sys.stderr, flush=True)
        sam_deploy([])
        outputs = outputs_of()
    pin = []
    if clip is not None:
        clip_pins, clip_publish = clip
        clip_version = bundle_version(clip_pins)
        clip_publish(outputs["ModelBucketName"], f"{outputs['ClipModelPrefix'].rstrip('/')}/{clip_version}")
        pin += [f"ClipModelVersion={clip_version}", f"ClipModelSha256={sha256_param(clip_pins)}"]
    version = bundle_version(digests)
    prefix = f"{outputs['CaptioningModelPrefix'].rstrip('/')}/{version}"
    publish(outputs["ModelBucketName"], prefix)
    sam_deploy([f"CaptioningModelVersion={version}", f"CaptioningModelSha256={sha256_param(digests)}", *pin])
    return outputs_of()


def run(cmd: list[str], dry_run: bool, **kwargs) -> subprocess.CompletedProcess | None:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    if dry_run:
        return None
    result = subprocess.run(cmd, **kwargs)
    if result.returncode != 0:
        raise DeployError(f"{cmd[0]} exited {result.returncode}")
    return result


def tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        raise DeployError(f"{path} is missing: run `make setup-deploy` first")
    return str(path)


def stack_outputs(stack: str, region: str | None) -> dict[str, str] | None:
    """The stack's outputs, or None when it does not exist."""
    import boto3  # from .venv-deploy (the SAM CLI's dependency)
    from botocore.exceptions import ClientError

    cfn = boto3.client("cloudformation", region_name=region)
    try:
        described = cfn.describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError as err:
        if "does not exist" in str(err):
            return None
        raise
    return {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}


def publish_bundle(model_dir: Path, digests: dict[str, str], bucket: str, prefix: str,
                   region: str | None, endpoint_url: str | None = None) -> None:
    """Uploads each pinned file with its SHA-256 checksum; S3 rejects a body that differs."""
    import base64

    import boto3

    s3 = boto3.client("s3", region_name=region, endpoint_url=endpoint_url)
    for name, hex_ in digests.items():
        key = f"{prefix.rstrip('/')}/{name}"
        checksum = base64.b64encode(bytes.fromhex(hex_)).decode()
        print(f"upload s3://{bucket}/{key} sha256={hex_}", file=sys.stderr, flush=True)
        with (model_dir / name).open("rb") as body:
            s3.put_object(Bucket=bucket, Key=key, Body=body, ChecksumSHA256=checksum)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captioning-model", type=Path, required=True,
                        help="the hoisted captioning bundle to publish")
    parser.add_argument("--clip-model", type=Path, default=None,
                        help="the CLIP bundle (Immich's layout) both towers serve; without it no CLIP bundle is named")
    parser.add_argument("--stack-name", default=None, help="default: samconfig's (coldpath)")
    parser.add_argument("--region", default=os.environ.get("AWS_REGION"))
    parser.add_argument("--skip-package", action="store_true",
                        help="deploy the zips already under target/lambda")
    parser.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE",
                        help="another template parameter override (repeatable)")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="deploy a random-weight test bundle anyway (ALLOW_RANDOM_WEIGHTS=1)")
    args = parser.parse_args(argv)
    try:
        digests = bundle_digests(args.captioning_model)
        reason = random_weights(args.captioning_model)
        if reason and not args.allow_random_weights:
            raise DeployError(f"{reason}: it would caption nonsense. Pass a trained bundle as "
                              "CAPTIONING_MODEL=DIR (functions/engines/captioning/MODEL.md), or "
                              "ALLOW_RANDOM_WEIGHTS=1 to deploy it anyway")
        clip_pins = None
        if args.clip_model is not None:
            clip_pins = clip_digests(args.clip_model)
            reason = random_weights(args.clip_model)
            if reason and not args.allow_random_weights:
                raise DeployError(f"{reason}: its vectors would match no word to any photo. Pass "
                                  "trained weights in Immich's layout as CLIP_MODEL=DIR "
                                  "(functions/engines/clip/README.md), or ALLOW_RANDOM_WEIGHTS=1 "
                                  "to deploy it anyway")
        else:
            print("deploy: no --clip-model: no CLIP bundle is named, so embeddings serves MiniLM "
                  "alone and the clip function refuses to start", file=sys.stderr)
        print(json.dumps({"CaptioningModelVersion": bundle_version(digests),
                          "CaptioningModelSha256": digests,
                          **({"ClipModelVersion": bundle_version(clip_pins),
                              "ClipModelSha256": clip_pins} if clip_pins else {})}, indent=2))
        sam = tool("sam")
        run([sam, "validate", "--lint", "--template-file", str(TEMPLATE)], args.dry_run)
        if not args.skip_package:
            run([sys.executable, str(ROOT / "tools" / "package.py")], args.dry_run)
        stack = args.stack_name or "coldpath"

        def sam_deploy(pin: list[str]) -> None:
            overrides = [*pin, *args.parameter]
            deploy = [sam, "deploy", "--config-file", str(SAMCONFIG)]
            if overrides:
                deploy += ["--parameter-overrides", *overrides]
            if args.stack_name:
                deploy += ["--stack-name", args.stack_name]
            if args.region:
                deploy += ["--region", args.region]
            run(deploy, args.dry_run, cwd=SAMCONFIG.parent)

        def publisher(model_dir: Path, pins: dict[str, str]):
            def publish(bucket: str, prefix: str) -> None:
                if args.dry_run:
                    print(f"+ upload {len(pins)} files to s3://{bucket}/{prefix}/", file=sys.stderr)
                    return
                publish_bundle(model_dir, pins, bucket, prefix, args.region)
            return publish

        def outputs_of() -> dict[str, str] | None:
            if args.dry_run:
                return {"ModelBucketName": "<the stack's ModelBucketName>",
                        "CaptioningModelPrefix": "<the stack's CaptioningModelPrefix>",
                        "ClipModelPrefix": "<the stack's ClipModelPrefix>"}
            return stack_outputs(stack, args.region)

        clip = (clip_pins, publisher(args.clip_model, clip_pins)) if clip_pins else None
        outputs = publish_then_switch(digests, outputs_of, sam_deploy,
                                      publisher(args.captioning_model, digests), clip=clip)
        print(json.dumps({k: outputs[k] for k in sorted(outputs)}, indent=2))
    except DeployError as err:
        print(f"deploy: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
