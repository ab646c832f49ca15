"""A content-addressed cache of stage outputs, shared through any S3-compatible store (as Bazel's remote cache).

A stage task's key is the SHA-256 of what decides its outputs: its name, the content of every file it depends on
(named relative to the pipeline's folder, so that two clones share keys), the settings it reads, the versions of
the Python packages that compute (TVM's among them) and the `--version` of the compiler it runs. Outputs are
stored by their SHA-256 under `<prefix>/cas/`, and a manifest per key under `<prefix>/tasks/` names them.

Before a stage runs, a manifest for its key restores its outputs instead: a build with an empty doit database
(a fresh clone) fetches what a colleague or a CI runner built. Every object is checked against its digest on
read: a corrupt or forged one is reported, deleted and rebuilt, never used. Writes are conditional (If-None-Match),
so two builders racing on one key never overwrite each other (the same key means the same bytes anyway). The
cache is optional: configured outside pipeline.toml (CRTFORGE_CACHE=s3://bucket/prefix, CRTFORGE_CACHE_ENDPOINT
for MinIO or another S3-compatible server, credentials as boto3 finds them); when it is not configured, or not
reachable, the build is a normal local one.

Each restore, publish and problem is one `crtforge-cache:` line on stderr (doit shows stderr as it happens).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tasks import fsutil
from tasks.config import PROJECT_ROOT
from tasks.deps import versions

ENV_URL = "CRTFORGE_CACHE"
ENV_ENDPOINT = "CRTFORGE_CACHE_ENDPOINT"


@dataclass(frozen=True)
class CacheSpec:
    """What a stage task's key is made of, and where its outputs go."""
    task: str  # doit's name of it, for messages
    stage: str  # the function it runs (module.function)
    root: Path  # names of files are relative to it: the pipeline file's folder
    file_dep: tuple[Path, ...]
    targets: tuple[Path, ...]
    config: Any  # the settings the task reads, as plain data
    compiler: str | None = None  # the toolchain's compiler, whose --version is part of the key


@dataclass(frozen=True)
class Store:
    bucket: str
    prefix: str
    endpoint: str | None

    @staticmethod
    def from_env(env: dict[str, str] | None = None) -> "Store | None":
        env = os.environ if env is None else env
        url = env.get(ENV_URL, "")
        if not url:
            return None
        if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
            raise CacheError(f"{ENV_URL}={url}: not an s3://bucket/prefix address")
        bucket, _, prefix = url[5:].partition("/")
        return Store(bucket, prefix.strip("/"), env.get(ENV_ENDPOINT) or None)

    def blob_key(self, digest: str) -> str:
        return f"{self.prefix}/cas/{digest}" if self.prefix else f"cas/{digest}"

    def manifest_key(self, key: str) -> str:
        return f"{self.prefix}/tasks/{key}.json" if self.prefix else f"tasks/{key}.json"


class CacheError(Exception):
    """The cache's configuration is malformed (reported, and the build goes on without the cache)."""


class CorruptObject(Exception):
    def __init__(self, name: str, want: str, got: str):
        super().__init__(f"object {name} holds {got}, not {want}" if got in ("missing", "something else")
                         else f"object {name} holds bytes whose sha256 is {got}, not {want}")
        self.name = name


def say(line: str) -> None:
    print(f"crtforge-cache: {line}", file=sys.stderr, flush=True)


# --- keys ------------------------------------------------------------------------------------------------------

def _name(path: str, root: Path) -> str:
    """A path as a key names it: relative to the pipeline's folder, or to crtforge's (its code, its models), so
    that two clones, or two pipelines at different depths, make the same key."""
    for base, label in ((root, "."), (PROJECT_ROOT, "crtforge")):
        if path == str(base) or path.startswith(str(base) + os.sep):
            return os.path.join(label, os.path.relpath(path, base))
    return path


def _relative(value: Any, root: Path) -> Any:
    """Settings with their paths named as `_name` does."""
    if isinstance(value, dict):
        return {k: _relative(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, root) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return _name(value, root)
    return value


@functools.lru_cache(maxsize=None)
def compiler_version(cc: str) -> str:
    """The first line of `cc --version` (a compiler that does not run gives its error: still a key part)."""
    try:
        proc = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
        return (proc.stdout or proc.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired) as e:
        return f"{cc}: {type(e).__name__}"


def task_key(spec: CacheSpec) -> str:
    deps = sorted((_name(str(p), spec.root), fsutil.sha256_file(p)) for p in spec.file_dep)
    what = {"task": spec.task, "stage": spec.stage, "deps": deps, "config": _relative(spec.config, spec.root), "packages": versions(),
            "compiler": compiler_version(spec.compiler) if spec.compiler else None}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


# --- the store -------------------------------------------------------------------------------------------------

def _client(store: Store):
    import boto3
    from botocore.config import Config

    # Few retries and short timeouts: an unreachable cache must cost seconds, not minutes, before the build goes on.
    return boto3.client("s3", endpoint_url=store.endpoint,
                        config=Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 1}))


def _get(client, store: Store, name: str) -> bytes | None:
    from botocore.exceptions import ClientError

    try:
        return client.get_object(Bucket=store.bucket, Key=name)["Body"].read()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise


def _put_new(client, store: Store, name: str, data: bytes) -> bool:
    """Write `name` unless it exists (a conditional write): whether this call wrote it."""
    from botocore.exceptions import ClientError

    try:
        client.put_object(Bucket=store.bucket, Key=name, Body=data, IfNoneMatch="*")
        return True
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return False
        raise


def read_manifest(raw: bytes, spec: CacheSpec, name: str) -> dict[str, dict[str, Any]]:
    """The manifest's entry per target, or CorruptObject: it must name exactly the task's targets."""
    try:
        manifest = json.loads(raw)
        ok = (isinstance(manifest, dict) and sorted(manifest) == sorted(os.path.relpath(t, spec.root)
                                                                        for t in spec.targets)
              and all(isinstance(e, dict) and isinstance(e.get("sha256"), str) for e in manifest.values()))
    except ValueError:
        ok = False
    if not ok:
        raise CorruptObject(name, "a manifest of the task's targets", "something else")
    return manifest


def restore(client, store: Store, spec: CacheSpec, key: str, raw: bytes) -> None:
    """Every output the manifest names, each checked against its digest before it is written (atomically)."""
    manifest = read_manifest(raw, spec, store.manifest_key(key))
    fetched = {}
    for rel, entry in manifest.items():
        digest = entry["sha256"]
        name = store.blob_key(digest)
        data = _get(client, store, name)
        if data is None:
            raise CorruptObject(name, digest, "missing")
        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            raise CorruptObject(name, digest, got)
        fetched[rel] = data
    for rel, data in fetched.items():
        fsutil.write_bytes(spec.root / rel, data)
        if manifest[rel].get("executable"):  # a test program: the runner executes it
            (spec.root / rel).chmod(0o755)


def publish(client, store: Store, spec: CacheSpec, key: str) -> int:
    """Store the task's outputs and then its manifest (a manifest never names a blob not yet stored); how many
    objects were new (the others the store held already: the same bytes from another task or builder)."""
    manifest = {}
    written = 0
    for target in spec.targets:
        data = target.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        written += _put_new(client, store, store.blob_key(digest), data)
        manifest[os.path.relpath(target, spec.root)] = {"sha256": digest,
                                                        "executable": bool(target.stat().st_mode & 0o100)}
    _put_new(client, store, store.manifest_key(key), json.dumps(manifest, sort_keys=True).encode())
    return written


def run_cached(spec: CacheSpec, func: Callable[..., Any], *args: Any) -> Any:
    """The stage `func(*args)`, or its outputs from the cache; with no cache configured, just the stage."""
    try:
        store = Store.from_env()
    except CacheError as e:
        say(f"{e}; building without the cache")
        store = None
    if store is None:
        return func(*args)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client = _client(store)
        key = task_key(spec)
        raw = _get(client, store, store.manifest_key(key))
    except (BotoCoreError, ClientError) as e:
        say(f"{spec.task}: the cache at {store.endpoint or 's3'} is not reachable ({type(e).__name__}); building")
        return func(*args)
    if raw is not None:
        try:
            restore(client, store, spec, key, raw)
            say(f"restored {spec.task} ({len(spec.targets)} files)")
            return None
        except CorruptObject as e:
            say(f"{spec.task}: {e}: not used; deleted and rebuilt")
            client.delete_object(Bucket=store.bucket, Key=e.name)
            client.delete_object(Bucket=store.bucket, Key=store.manifest_key(key))
        except (BotoCoreError, ClientError) as e:
            say(f"{spec.task}: cannot restore ({type(e).__name__}: {e}); building")
    result = func(*args)
    if all(t.is_file() for t in spec.targets):
        try:
            new = publish(client, store, spec, key)
            say(f"published {spec.task} ({new} of {len(spec.targets)} files new to the store)")
        except (BotoCoreError, ClientError) as e:
            say(f"{spec.task}: cannot publish ({type(e).__name__}); the build goes on")
    return result
