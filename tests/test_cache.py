"""The content-addressed cache (tasks/cache.py) against a local S3 server (moto's, on 127.0.0.1): a build with
an empty doit database restores what another folder built, a corrupt object is reported and rebuilt, and an
unreachable store means a normal build."""

from __future__ import annotations

import filecmp
import os
import re
from pathlib import Path

import pytest

from conftest import SINE, run_doit
from tasks.cache import CacheError, CacheSpec, Store, task_key

PIPELINE = f'[models.sine]\nsource = "{SINE}"\n[targets.host]\nbackend = "c"\ntoolchain = "host-gcc"\n'
BUCKET = "crtforge-cache"
CACHED_TASKS = {"import:sine", "reference:sine", "relax:host/sine", "classify:host/sine", "codegen:host/sine",
                "link:host/sine"}


@pytest.fixture(scope="module")
def s3():
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "CRTFORGE_CACHE": f"s3://{BUCKET}/team", "CRTFORGE_CACHE_ENDPOINT": f"http://{host}:{port}"}
    client = boto3.client("s3", endpoint_url=env["CRTFORGE_CACHE_ENDPOINT"], aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield env, client
    server.stop()


def build(folder: Path, env: dict[str, str]):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pipeline.toml").write_text(PIPELINE)
    result = run_doit(folder / "pipeline.toml", "build", env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    return result


def said(result, what: str) -> set[str]:
    return set(re.findall(rf"^crtforge-cache: {what} (\S+)", result.stderr, re.M))


def same_bytes(a: Path, b: Path) -> bool:
    files = lambda out: {str(p.relative_to(out)): p for p in out.rglob("*")  # noqa: E731
                         if p.is_file() and not p.name.startswith(".crtforge.")}
    fa, fb = files(a), files(b)
    return sorted(fa) == sorted(fb) and all(filecmp.cmp(fa[n], fb[n], shallow=False) for n in fa)


@pytest.fixture(scope="module")
def published(s3, tmp_path_factory):
    env, _ = s3
    root = tmp_path_factory.mktemp("first")
    result = build(root, env)
    assert said(result, "published") == CACHED_TASKS and said(result, "restored") == set()
    return root


def test_an_empty_database_restores_what_the_cache_holds(s3, published, tmp_path):
    env, _ = s3
    result = build(tmp_path / "clone", env)
    assert said(result, "restored") == CACHED_TASKS and said(result, "published") == set()
    assert same_bytes(published / "out", tmp_path / "clone" / "out")
    assert run_doit(tmp_path / "clone" / "pipeline.toml", "test", env=env).returncode == 0


def test_a_corrupt_object_is_detected_rebuilt_and_reported(s3, published, tmp_path):
    env, client = s3
    plan = (published / "out" / "host" / "sine" / "plan.json").read_bytes()
    import hashlib

    name = f"team/cas/{hashlib.sha256(plan).hexdigest()}"
    client.put_object(Bucket=BUCKET, Key=name, Body=plan.replace(b'"arena_bytes"', b'"arena_bytez"'))
    result = build(tmp_path / "victim", env)
    assert f"crtforge-cache: relax:host/sine: object {name} holds bytes whose sha256 is" in result.stderr
    assert "not used; deleted and rebuilt" in result.stderr
    assert said(result, "published") == {"relax:host/sine"}
    assert said(result, "restored") == CACHED_TASKS - {"relax:host/sine"}
    assert same_bytes(published / "out", tmp_path / "victim" / "out")
    assert client.get_object(Bucket=BUCKET, Key=name)["Body"].read() == plan  # the rebuild stored the right bytes


def test_an_unreachable_store_is_a_local_build(tmp_path):
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "CRTFORGE_CACHE": f"s3://{BUCKET}/team", "CRTFORGE_CACHE_ENDPOINT": "http://127.0.0.1:9"}
    result = build(tmp_path, env)
    assert "crtforge-cache: relax:host/sine: the cache at http://127.0.0.1:9 is not reachable" in result.stderr
    assert (tmp_path / "out" / "host" / "sine" / "program.elf").is_file()


def test_keys_name_files_relative_to_the_pipeline(tmp_path):
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        (tmp_path / where / "m.onnx").write_bytes(b"model")
    keys = {task_key(CacheSpec("t", "s", tmp_path / w, (tmp_path / w / "m.onnx",), (tmp_path / w / "out",),
                               [{"source": str(tmp_path / w / "m.onnx")}])) for w in ("a", "b")}
    assert len(keys) == 1
    (tmp_path / "b" / "m.onnx").write_bytes(b"other model")
    assert task_key(CacheSpec("t", "s", tmp_path / "b", (tmp_path / "b" / "m.onnx",), (), [])) != keys.pop()


def test_the_store_is_configured_by_environment():
    assert Store.from_env({}) is None
    assert Store.from_env({"CRTFORGE_CACHE": "s3://b/p/q", "CRTFORGE_CACHE_ENDPOINT": "http://m:9000"}) == Store(
        "b", "p/q", "http://m:9000")
    with pytest.raises(CacheError, match="CRTFORGE_CACHE=http://x: not an s3://bucket/prefix address"):
        Store.from_env({"CRTFORGE_CACHE": "http://x"})


def test_a_forged_manifest_is_not_used(tmp_path):
    from tasks.cache import CorruptObject, read_manifest

    spec = CacheSpec("t", "s", tmp_path, (), (tmp_path / "out" / "a.json",), [])
    assert read_manifest(b'{"out/a.json": {"sha256": "ab", "executable": false}}', spec, "m") == {
        "out/a.json": {"sha256": "ab", "executable": False}}
    for forged in (b"not json", b'{"out/other.json": {"sha256": "ab"}}', b'{"out/a.json": "ab"}', b"[]"):
        with pytest.raises(CorruptObject, match="object m holds something else, not a manifest of the task's targets"):
            read_manifest(forged, spec, "m")
