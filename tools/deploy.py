#!/usr/bin/env python3
"""Deploy coldpath to an AWS account: the one documented flow (`make deploy`).

    python3 tools/deploy.py --captioning-model DIR [--stack-name NAME] [--region REGION]
                            [--parameter KEY=VALUE]... [--skip-package] [--dry-run]

In order:
1. `sam validate --lint` on infra/template.yaml.
2. `make package`'s build (tools/package.py) unless --skip-package: the function zips, with the
   embeddings and faces models and their prepared graphs inside, and the ONNX Runtime and
   image-codecs layers, size-checked. These exact files are what `sam deploy` uploads (CodeUri points at them).
3. The captioning bundle's digests, computed here from DIR (the files the captioning function
   pins for a hoisted merged decoder: functions/captioning/src/model/config.rs), so nobody types
   a digest.
4. `sam deploy --config-file infra/samconfig.toml` with those digests (and any --parameter).
5. The bundle uploaded to the stack's model bucket under its prefix (outputs ModelBucketName and
   CaptioningModelPrefix), each object sent with its SHA-256 checksum so S3 refuses a corrupted
   upload. Captioning reads it at its first cold start; messages that arrive before step 5 ends
   fail their first receive and are retried (visibility timeout 720 s).

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
            "functions/captioning/MODEL.md)"
        )
    return {f: sha256_file(model_dir / f) for f in CAPTIONING_FILES}


def sha256_param(digests: dict[str, str]) -> str:
    """The CAPTIONING_MODEL_SHA256 value: file=hex, comma-separated."""
    return ",".join(f"{name}={hex_}" for name, hex_ in digests.items())


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


def stack_outputs(stack: str, region: str | None) -> dict[str, str]:
    import boto3  # from .venv-deploy (the SAM CLI's dependency)

    cfn = boto3.client("cloudformation", region_name=region)
    described = cfn.describe_stacks(StackName=stack)["Stacks"][0]
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
    parser.add_argument("--stack-name", default=None, help="default: samconfig's (coldpath)")
    parser.add_argument("--region", default=os.environ.get("AWS_REGION"))
    parser.add_argument("--skip-package", action="store_true",
                        help="deploy the zips already under target/lambda")
    parser.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE",
                        help="another template parameter override (repeatable)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    try:
        digests = bundle_digests(args.captioning_model)
        print(json.dumps({"CaptioningModelSha256": digests}, indent=2))
        sam = tool("sam")
        run([sam, "validate", "--lint", "--template-file", str(TEMPLATE)], args.dry_run)
        if not args.skip_package:
            run([sys.executable, str(ROOT / "tools" / "package.py")], args.dry_run)
        overrides = [f"CaptioningModelSha256={sha256_param(digests)}", *args.parameter]
        deploy = [sam, "deploy", "--config-file", str(SAMCONFIG),
                  "--parameter-overrides", *overrides]
        if args.stack_name:
            deploy += ["--stack-name", args.stack_name]
        if args.region:
            deploy += ["--region", args.region]
        run(deploy, args.dry_run, cwd=SAMCONFIG.parent)
        if args.dry_run:
            print("dry run: the bundle would go to the stack's ModelBucketName output",
                  file=sys.stderr)
            return 0
        outputs = stack_outputs(args.stack_name or "coldpath", args.region)
        publish_bundle(args.captioning_model, digests, outputs["ModelBucketName"],
                       outputs["CaptioningModelPrefix"], args.region)
        print(json.dumps({k: outputs[k] for k in sorted(outputs)}, indent=2))
    except DeployError as err:
        print(f"deploy: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
